"""XMP sidecar files carrying the landmark as a keyword and, optionally, its location.

The photos themselves are never touched. The keyword goes into the three lists photo
managers read: dc:subject (Lightroom, Bridge, darktable, digiKam, PhotoPrism, Immich),
lr:hierarchicalSubject "Landmarks|Eiffel Tower" (Lightroom, darktable, digiKam, Immich)
and digiKam:TagsList "Landmarks/Eiffel Tower" (digiKam; Immich reads it first). A
location goes into exif:GPSLatitude / exif:GPSLongitude in XMP's GPSCoordinate form
("48,51.502200N", "2,17.668860E"), with exif:GPSVersionID and exif:GPSMapDatum.

An existing sidecar (edits, ratings, the photographer's own keywords and location) is
kept: lmrec adds its keyword and replaces only the keyword it wrote before, which it
remembers in lmrec:label. A location is written only where the sidecar has none: any
GPS property already there (exif:GPS*, or a latitude/longitude in any namespace) is the
photographer's and is never changed, unless lmrec:locatedFrom and lmrec:location say
lmrec wrote it and it still holds exactly what lmrec wrote. A sidecar that lmrec cannot
read or merge (not XML, a DOCTYPE, an unexpected shape) raises BadSidecar and is left
byte for byte as it was.

The merged sidecar is written with this module's own serializer: every namespace
gets a named prefix from an explicit per-file map (the file's own prefix, else the
usual XMP prefix for the URI, else one derived from the URI), so the output never
depends on ElementTree's process-wide prefix registry, and the text is parsed
back before it replaces the old file.
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from xml.parsers import expat
from xml.sax.saxutils import escape, quoteattr

from lmrec import atomic

NAMESPACES = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
    "digiKam": "http://www.digikam.org/ns/1.0/",
    "exif": "http://ns.adobe.com/exif/1.0/",
    "lmrec": "https://github.com/lmrec/lmrec/ns/1.0/",
}
HIERARCHY_ROOT = "Landmarks"
# The lists a keyword goes into: (prefix, name, container of a new list, entry for a label).
# digiKam writes TagsList as an rdf:Seq; the others are rdf:Bags.
KEYWORD_LISTS = (
    ("dc", "subject", "Bag", "{}"),
    ("lr", "hierarchicalSubject", "Bag", HIERARCHY_ROOT + "|{}"),
    ("digiKam", "TagsList", "Seq", HIERARCHY_ROOT + "/{}"),
)
GPS_VERSION = "2.3.0.0"  # EXIF 2.3's GPS tags, as exiftool writes them
GPS_MAP_DATUM = "WGS-84"
LOCATED_FROM = "landmark"  # lmrec:locatedFrom: the location is the landmark's, not the camera's
# A sidecar location lmrec wrote still counts as lmrec's when it reads back this close.
_SAME_PLACE_DEGREES = 1e-6
_PACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
_PACKET_END = '\n<?xpacket end="w"?>\n'
_XML_NS = "http://www.w3.org/XML/1998/namespace"  # xml:lang; bound by XML itself
# The prefixes photo tools use for the namespaces they write, so that a sidecar whose
# properties sit in a default namespace comes out as xmp:Rating, not as a made-up prefix.
_USUAL_PREFIXES = {
    "http://ns.adobe.com/xap/1.0/": "xmp",
    "http://ns.adobe.com/xap/1.0/mm/": "xmpMM",
    "http://ns.adobe.com/xap/1.0/rights/": "xmpRights",
    "http://ns.adobe.com/xap/1.0/sType/ResourceEvent#": "stEvt",
    "http://ns.adobe.com/xap/1.0/sType/ResourceRef#": "stRef",
    "http://ns.adobe.com/xmp/1.0/DynamicMedia/": "xmpDM",
    "http://ns.adobe.com/photoshop/1.0/": "photoshop",
    "http://ns.adobe.com/camera-raw-settings/1.0/": "crs",
    "http://ns.adobe.com/exif/1.0/": "exif",
    "http://ns.adobe.com/exif/1.0/aux/": "aux",
    "http://ns.adobe.com/tiff/1.0/": "tiff",
    "http://cipa.jp/exif/1.0/": "exifEX",
    "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/": "Iptc4xmpCore",
    "http://iptc.org/std/Iptc4xmpExt/2008-02-29/": "Iptc4xmpExt",
    "http://ns.microsoft.com/photo/1.0/": "MicrosoftPhoto",
    "http://darktable.sf.net/": "darktable",
    "http://www.digikam.org/ns/1.0/": "digiKam",
    **{uri: prefix for prefix, uri in NAMESPACES.items()},
}
# Sidecars are kilobytes (a few megabytes with an embedded preview); a larger file at a
# sidecar's name is not one, and is not read into memory.
MAX_SIDECAR_BYTES = 64 * 1024 * 1024


class BadSidecar(Exception):
    """An existing sidecar lmrec cannot safely edit; str() says why."""


def _tag(prefix: str, name: str) -> str:
    return f"{{{NAMESPACES[prefix]}}}{name}"


def _empty_packet() -> ET.Element:
    root = ET.Element(_tag("x", "xmpmeta"))
    rdf = ET.SubElement(root, _tag("rdf", "RDF"))
    ET.SubElement(rdf, _tag("rdf", "Description"), {_tag("rdf", "about"): ""})
    return root


def _refuse_dtd(*_) -> None:
    raise BadSidecar("it declares a DOCTYPE (entities are not expanded; XMP has none)")


def _declarations(data: bytes) -> list[tuple[str, str]]:
    """The (prefix, uri) namespace declarations of data, in document order ("" = default).

    This pass also guards the ElementTree parse that follows: expat would expand internal
    entities (a "billion laughs" file grows to gigabytes), so any DOCTYPE stops it at its
    first line, before an entity is declared.
    """
    found: list[tuple[str, str]] = []
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartNamespaceDeclHandler = lambda prefix, uri: found.append((prefix or "", uri))
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.Parse(data, True)
    return found


def _load(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_SIDECAR_BYTES + 1)
    if len(data) > MAX_SIDECAR_BYTES:
        raise BadSidecar(f"it is larger than {MAX_SIDECAR_BYTES} bytes")
    return data


def _parse(data: bytes) -> tuple[ET.Element, list[tuple[str, str]]]:
    """The packet's x:xmpmeta element (a bare rdf:RDF gets one) and its declarations."""
    declared = _declarations(data)
    root = ET.fromstring(data)
    if root.tag == _tag("rdf", "RDF"):
        wrapper = ET.Element(_tag("x", "xmpmeta"))
        wrapper.append(root)
        root = wrapper
    if root.find(_tag("rdf", "RDF")) is None:
        raise BadSidecar("it has no rdf:RDF")
    return root, declared


def _reason(error: BaseException) -> str:
    if isinstance(error, BadSidecar | ET.ParseError | OSError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _read(path: str) -> tuple[ET.Element, list[tuple[str, str]]]:
    """Parses an existing sidecar; whatever goes wrong becomes BadSidecar."""
    try:
        return _parse(_load(path))
    except Exception as error:
        raise BadSidecar(
            f"existing sidecar {path} is not readable XMP ({_reason(error)}); left as is"
        ) from None


def _descriptions(root: ET.Element) -> list[ET.Element]:
    """The rdf:Description elements (XMP may split properties over several); at least one."""
    rdf = root.find(_tag("rdf", "RDF"))
    found = rdf.findall(_tag("rdf", "Description"))
    if not found:
        found = [ET.SubElement(rdf, _tag("rdf", "Description"), {_tag("rdf", "about"): ""})]
    return found


def _bag(
    descriptions: list[ET.Element], prefix: str, name: str, container: str = "Bag"
) -> ET.Element:
    """The rdf:Bag (or rdf:Seq) of a list property; a new rdf:<container> where it has none."""
    tag = _tag(prefix, name)
    if any(tag in description.attrib for description in descriptions):
        raise BadSidecar(f"its {prefix}:{name} is a single value, not a list")
    holder = next((d.find(tag) for d in descriptions if d.find(tag) is not None), None)
    if holder is None:
        holder = ET.SubElement(descriptions[0], tag)
    containers = list(holder)
    if not containers and not holder.attrib and not (holder.text or "").strip():
        return ET.SubElement(holder, _tag("rdf", container))
    if len(containers) == 1 and containers[0].tag in (_tag("rdf", "Bag"), _tag("rdf", "Seq")):
        return containers[0]
    raise BadSidecar(f"its {prefix}:{name} is not an rdf:Bag")


def _set_item(bag: ET.Element, new: str, old: str | None) -> None:
    items = bag.findall(_tag("rdf", "li"))
    for item in items:
        if old is not None and item.text == old and old != new:
            bag.remove(item)
    if not any(item.text == new for item in bag.findall(_tag("rdf", "li"))):
        ET.SubElement(bag, _tag("rdf", "li")).text = new


def _value(descriptions: list[ET.Element], tag: str) -> str | None:
    """A simple property's value, written as an element or (Adobe's compact form) an attribute."""
    for description in descriptions:
        if tag in description.attrib:
            return description.get(tag)
        element = description.find(tag)
        if element is not None:
            return element.text or ""
    return None


def _set_value(descriptions: list[ET.Element], prefix: str, name: str, value: str) -> None:
    """Sets prefix:name where the file has it (element or attribute), else adds an element."""
    tag = _tag(prefix, name)
    for description in descriptions:
        if tag in description.attrib:
            description.set(tag, value)
            return
        element = description.find(tag)
        if element is not None:
            if len(element):
                raise BadSidecar(f"its {prefix}:{name} is not a simple value")
            element.text = value
            return
    ET.SubElement(descriptions[0], tag).text = value


def _remove_value(descriptions: list[ET.Element], prefix: str, name: str) -> None:
    """Removes every prefix:name property (element or attribute) of the descriptions."""
    tag = _tag(prefix, name)
    for description in descriptions:
        description.attrib.pop(tag, None)
        for element in description.findall(tag):
            description.remove(element)


def _keywords(root: ET.Element, prefix: str = "dc", name: str = "subject") -> list[str]:
    """The entries of the list property prefix:name (dc:subject: the keywords)."""
    for description in root.find(_tag("rdf", "RDF")).findall(_tag("rdf", "Description")):
        holder = description.find(_tag(prefix, name))
        if holder is not None:
            return [item.text or "" for item in holder.iter(_tag("rdf", "li"))]
    return []


# XMP's GPSCoordinate: "DDD,MM.mmk" or "DDD,MM,SSk" (k one of N S E W). Signed decimal
# degrees ("48.8584", "-2.5") are read too: some tools write them.
_GPS_MINUTES = re.compile(
    r"(?P<degrees>\d{1,3}),(?P<minutes>\d{1,2}(?:\.\d+)?)"
    r"(?:,(?P<seconds>\d{1,2}(?:\.\d+)?))?(?P<ref>[NSEW])"
)
_GPS_DECIMAL = re.compile(r"(?P<sign>[+-]?)(?P<degrees>\d{1,3}(?:\.\d+)?)(?P<ref>[NSEW]?)")
_AXES = {"latitude": ("N", "S", 90.0), "longitude": ("E", "W", 180.0)}


def _degrees(text: str | None, axis: str) -> float | None:
    """Signed degrees of an XMP GPS coordinate on axis; None when text is not one."""
    positive, negative, limit = _AXES[axis]
    text = (text or "").strip().upper()
    match = _GPS_MINUTES.fullmatch(text)
    if match:
        minutes, seconds = float(match["minutes"]), float(match["seconds"] or 0)
        if (match["seconds"] and "." in match["minutes"]) or minutes >= 60 or seconds >= 60:
            return None
        value = int(match["degrees"]) + minutes / 60 + seconds / 3600
        sign = -1.0 if match["ref"] == negative else 1.0
    else:
        match = _GPS_DECIMAL.fullmatch(text)
        if not match or (match["sign"] and match["ref"]):
            return None
        value = float(match["degrees"])
        sign = -1.0 if match["sign"] == "-" or match["ref"] == negative else 1.0
    if match["ref"] not in ("", positive, negative) or value > limit:
        return None
    return sign * value


def gps_coordinate(value: float, axis: str) -> str:
    """value (signed degrees) in XMP's GPSCoordinate form: "48,51.502200N", "33,51.407040S".

    Six decimals of a minute are 2e-8 degrees (2 mm), well below what a landmark needs.
    """
    positive, negative, limit = _AXES[axis]
    if not (math.isfinite(value) and abs(value) <= limit):
        raise ValueError(f"{axis} {value!r} is not between -{limit:g} and {limit:g}")
    micro = round(abs(value) * 60_000_000)  # millionths of a minute
    degrees, rest = divmod(micro, 60_000_000)
    ref = negative if value < 0 and micro else positive
    return f"{degrees},{rest // 1_000_000:02d}.{rest % 1_000_000:06d}{ref}"


# A property that places the photo: exiftool's XMP-exif GPS tags, and a latitude, longitude
# or GPS position in any namespace (drone-dji:GpsLatitude, IPTC LocationShown's, ...).
_GPS_NAME = re.compile(r"(?i)gps.*(latitude|longitude|position|coordinates?)|latitude|longitude")
# What lmrec writes for a location (and removes again when it is lmrec's own).
_LOCATION_PROPERTIES = ("GPSLatitude", "GPSLongitude", "GPSVersionID", "GPSMapDatum")


def _gps_properties(root: ET.Element) -> list[str]:
    """The name of every GPS property anywhere in root (once per occurrence), lmrec's aside."""
    found = []
    for element in root.iter():
        for name in (element.tag, *element.attrib):
            uri, local = _split(name)
            if uri == NAMESPACES["lmrec"]:
                continue
            if (uri == NAMESPACES["exif"] and local.startswith("GPS")) or _GPS_NAME.fullmatch(
                local
            ):
                found.append(name)
    return found


def _top_level_names(descriptions: list[ET.Element]) -> list[str]:
    """The property names directly on the descriptions (attributes and child elements)."""
    return [name for d in descriptions for name in (*d.attrib, *(child.tag for child in d))]


def _exif_location(descriptions: list[ET.Element]) -> tuple[str | None, str | None]:
    return (
        _value(descriptions, _tag("exif", "GPSLatitude")),
        _value(descriptions, _tag("exif", "GPSLongitude")),
    )


def _recorded_location(descriptions: list[ET.Element]) -> tuple[float, float] | None:
    """The location lmrec recorded writing (lmrec:locatedFrom + lmrec:location), if any."""
    if _value(descriptions, _tag("lmrec", "locatedFrom")) is None:
        return None
    parts = (_value(descriptions, _tag("lmrec", "location")) or "").split(",")
    if len(parts) != 2:
        return None
    latitude, longitude = _degrees(parts[0], "latitude"), _degrees(parts[1], "longitude")
    return None if latitude is None or longitude is None else (latitude, longitude)


def _location_owner(root: ET.Element, descriptions: list[ET.Element]) -> str:
    """Whose location the sidecar holds: "none", "lmrec" (as lmrec wrote it) or "user".

    lmrec's own is exif:GPSLatitude/GPSLongitude (+ GPSVersionID, GPSMapDatum) directly on
    the description, once each, equal to what lmrec:location records; any other GPS
    property, or a changed value, makes the location the photographer's.
    """
    found = _gps_properties(root)
    if not found:
        return "none"
    recorded = _recorded_location(descriptions)
    lmrecs = {_tag("exif", name) for name in _LOCATION_PROPERTIES}
    top = [name for name in _top_level_names(descriptions) if name in lmrecs]
    if recorded is None or sorted(found) != sorted(top) or len(set(top)) != len(top):
        return "user"
    expected = {"GPSVersionID": GPS_VERSION, "GPSMapDatum": GPS_MAP_DATUM}
    for name, value in expected.items():
        if _value(descriptions, _tag("exif", name)) not in (None, value):
            return "user"
    for text, axis, wrote in zip(_exif_location(descriptions), _AXES, recorded, strict=True):
        if text is None:
            continue
        value = _degrees(text, axis)
        if value is None or abs(value - wrote) > _SAME_PLACE_DEGREES:
            return "user"
    return "lmrec"


def _parsed_location(root: ET.Element, where: str) -> tuple[float, float] | None:
    """(latitude, longitude) of exif:GPSLatitude/GPSLongitude (else another namespace's pair).

    Raises:
      BadSidecar: a latitude or longitude is there but is not a GPS coordinate.
    """
    descriptions = root.find(_tag("rdf", "RDF")).findall(_tag("rdf", "Description"))
    pair = _exif_location(descriptions)
    if pair == (None, None):
        for description in descriptions:  # drone-dji:GpsLatitude and the like
            values = {
                _split(name)[1].lower(): value
                for name, value in [
                    *description.attrib.items(),
                    *((child.tag, child.text) for child in description if not len(child)),
                ]
            }
            if "gpslatitude" in values or "gpslongitude" in values:
                pair = (values.get("gpslatitude"), values.get("gpslongitude"))
                break
    if pair == (None, None):
        return None
    latitude, longitude = _degrees(pair[0], "latitude"), _degrees(pair[1], "longitude")
    if latitude is None or longitude is None:
        raise BadSidecar(f"{where} has a GPS position lmrec cannot read: {pair[0]!r}, {pair[1]!r}")
    return latitude, longitude


def _split(name: str) -> tuple[str, str]:
    """(uri, local name) of an ElementTree name; uri is "" for a name in no namespace."""
    if name.startswith("{"):
        uri, local = name[1:].split("}", 1)
        return uri, local
    return "", name


def _uris(root: ET.Element) -> list[str]:
    """The namespaces root's elements and attributes use, in document order."""
    found: dict[str, None] = {}
    for element in root.iter():
        for name in (element.tag, *element.attrib):
            uri = _split(name)[0]
            if uri and uri != _XML_NS:
                found[uri] = None
    return list(found)


# ns0, ns1, ... are the names ElementTree makes up for namespaces it knows no prefix for (and
# register_namespace refuses them). They say nothing, so a usual or derived prefix replaces
# them; names starting with "xml" are reserved by XML itself.
_RESERVED_PREFIX = re.compile(r"(?i:xml).*|ns\d+")


def _derived_prefix(uri: str) -> str:
    """The URI's last word that is not a number: "http://a.org/camera/1.0/" -> "camera"."""
    words = re.findall(r"[A-Za-z][A-Za-z0-9]*", uri.split("://", 1)[-1])
    return words[-1] if words and not _RESERVED_PREFIX.fullmatch(words[-1]) else "ns_"


def _prefixes(uris: list[str], declared: list[tuple[str, str]]) -> dict[str, str]:
    """A distinct, named prefix for each URI: the file's own, else the usual one, else derived.

    A default namespace (prefix "") gets a prefix too: unprefixed attributes are in no
    namespace, so a prefix is the one spelling that is right for elements and attributes.
    """
    chosen: dict[str, str] = {}

    def take(uri: str, prefix: str) -> None:
        free = prefix not in chosen.values() and not _RESERVED_PREFIX.fullmatch(prefix)
        if uri not in chosen and prefix and free:
            chosen[uri] = prefix

    for prefix, uri in declared:
        if uri in uris:
            take(uri, prefix)
    for uri in uris:
        take(uri, _USUAL_PREFIXES.get(uri, ""))
    for uri in uris:
        base, number = _derived_prefix(uri), 1
        while uri not in chosen:
            take(uri, base if number == 1 else f"{base}{number}")
            number += 1
    return chosen


# Attribute values keep their tabs and line breaks (a parser turns raw ones to spaces).
_ATTRIBUTE_ESCAPES = {"\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}


def _serialize(root: ET.Element, prefixes: dict[str, str]) -> str:
    """root as XML text, every namespace declared on root with the prefix given for it."""
    parts: list[str] = []

    def name(qualified: str) -> str:
        uri, local = _split(qualified)
        if not uri:
            return local
        return f"{'xml' if uri == _XML_NS else prefixes[uri]}:{local}"

    def write(element: ET.Element, declarations: list[tuple[str, str]]) -> None:
        tag = name(element.tag)
        attributes = declarations + [(name(key), value) for key, value in element.items()]
        parts.append(f"<{tag}")
        parts.extend(f" {key}={quoteattr(value, _ATTRIBUTE_ESCAPES)}" for key, value in attributes)
        if len(element) or element.text:
            parts.append(">" + escape(element.text or "", {"\r": "&#13;"}))
            for child in element:
                write(child, [])
            parts.append(f"</{tag}>")
        else:
            parts.append("/>")
        parts.append(escape(element.tail or "", {"\r": "&#13;"}))

    write(root, [(f"xmlns:{prefix}", uri) for uri, prefix in prefixes.items()])
    return "".join(parts)


def _forget_location(descriptions: list[ET.Element], gps_too: bool) -> None:
    """Removes lmrec's record of a location (and, gps_too, the location lmrec wrote)."""
    for name in ("locatedFrom", "location"):
        _remove_value(descriptions, "lmrec", name)
    for name in _LOCATION_PROPERTIES if gps_too else ():
        _remove_value(descriptions, "exif", name)


def _place(
    root: ET.Element,
    descriptions: list[ET.Element],
    location: tuple[float, float] | None,
    moved: bool,
) -> bool:
    """Writes location where the sidecar has none of the photographer's; True when written.

    lmrec's own earlier location is updated in place; with no new location it stays while
    the label stays, and goes when the label changed (it was the old landmark's).
    """
    owner = _location_owner(root, descriptions)
    if owner == "user":
        _forget_location(descriptions, gps_too=False)
        return False
    if location is None:
        if owner == "none" or moved:
            _forget_location(descriptions, gps_too=True)
        return False
    latitude, longitude = (gps_coordinate(v, axis) for v, axis in zip(location, _AXES, strict=True))
    _set_value(descriptions, "exif", "GPSVersionID", GPS_VERSION)
    _set_value(descriptions, "exif", "GPSLatitude", latitude)
    _set_value(descriptions, "exif", "GPSLongitude", longitude)
    _set_value(descriptions, "exif", "GPSMapDatum", GPS_MAP_DATUM)
    _set_value(descriptions, "lmrec", "locatedFrom", LOCATED_FROM)
    _set_value(descriptions, "lmrec", "location", f"{location[0]:.8f},{location[1]:.8f}")
    return True


def _merged(
    root: ET.Element,
    declared: list[tuple[str, str]],
    label: str,
    score: float,
    model: str,
    location: tuple[float, float] | None,
) -> tuple[str, bool]:
    """The packet text of root with label (and location) added, checked to read back.

    Returns the text and whether the location was written.
    """
    descriptions = _descriptions(root)
    old = _value(descriptions, _tag("lmrec", "label"))
    for prefix, name, container, form in KEYWORD_LISTS:
        _set_item(
            _bag(descriptions, prefix, name, container),
            form.format(label),
            None if old is None else form.format(old),
        )
    located = _place(root, descriptions, location, moved=old is not None and old != label)
    _set_value(descriptions, "lmrec", "label", label)
    _set_value(descriptions, "lmrec", "score", f"{score:.4f}")
    _set_value(descriptions, "lmrec", "model", model)
    ET.indent(root, space=" ")
    text = _PACKET_BEGIN + _serialize(root, _prefixes(_uris(root), declared)) + _PACKET_END
    back = _parse(text.encode("utf-8"))[0]
    for prefix, name, _, form in KEYWORD_LISTS:
        if form.format(label) not in _keywords(back, prefix, name):
            raise BadSidecar(f"the merged text does not read back with {prefix}:{name}")
    if located:
        found = _parsed_location(back, "the merged text")
        if found is None or max(abs(a - b) for a, b in zip(found, location, strict=True)) > 1e-7:
            raise BadSidecar("the merged text does not read back with the location")
    return text, located


def keywords(path: str) -> list[str]:
    """The dc:subject keywords of a sidecar (empty when it has none).

    Raises:
      BadSidecar: the file at path is not XMP lmrec can read.
    """
    return _keywords(_read(path)[0])


def location(path: str) -> tuple[float, float] | None:
    """(latitude, longitude) in signed degrees of the sidecar at path, None when it has none.

    Reads exif:GPSLatitude/GPSLongitude ("DD,MM.mmmN" or "DD,MM,SSN"; lmrec's own
    location too), else a GPSLatitude/GPSLongitude pair in another namespace. A missing
    file has no location.

    Raises:
      BadSidecar: the file is not XMP lmrec can read, or its GPS position is unreadable.
    """
    if not os.path.lexists(path):
        return None
    return _parsed_location(_read(path)[0], f"sidecar {path}")


def photographer_location(path: str) -> tuple[float, float] | None:
    """The sidecar's location when it is the photographer's: None when it has none, or
    when it is the landmark location lmrec wrote (unchanged since), which is no evidence
    of where the photo was taken.

    Raises:
      BadSidecar: the file is not XMP lmrec can read, or its GPS position is unreadable.
    """
    if not os.path.lexists(path):
        return None
    root = _read(path)[0]
    descriptions = _descriptions(root)
    if _location_owner(root, descriptions) == "lmrec":
        return None
    return _parsed_location(root, f"sidecar {path}")


def write_keyword(
    path: str,
    label: str,
    score: float,
    model: str,
    location: tuple[float, float] | None = None,
) -> bool:
    """Adds label as a keyword, and location if given, to the sidecar at path, atomically.

    The sidecar is created when missing (its folder too). Keyword and location land in
    one write. A location the sidecar already has is never overwritten unless lmrec wrote
    it (lmrec:locatedFrom) and it is unchanged; lmrec's own location is removed when the
    label changes and no new location is given.

    Args:
      location: (latitude, longitude) in signed degrees (WGS 84) of the landmark.

    Returns:
      True when the sidecar now holds the given location; False without one, or when the
      sidecar's own location was kept.

    Raises:
      ValueError: location is outside [-90, 90] x [-180, 180].
      BadSidecar: an existing file at path is not XMP lmrec can read or merge into; the
        file is not touched.
      OSError: the new text could not be written.
    """
    if location is not None:
        latitude, longitude = (float(value) for value in location)
        for value, axis in ((latitude, "latitude"), (longitude, "longitude")):
            gps_coordinate(value, axis)  # raises ValueError before anything is read
        location = (latitude, longitude)
    root, declared = _read(path) if os.path.exists(path) else (_empty_packet(), [])
    try:
        text, located = _merged(root, declared, label, score, model, location)
    except Exception as error:
        raise BadSidecar(
            f"sidecar {path} cannot take the keyword ({_reason(error)}); left as is"
        ) from None
    atomic.write_text(path, text)
    return located

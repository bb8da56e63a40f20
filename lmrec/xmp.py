"""XMP sidecar files carrying the landmark as a keyword; the photos themselves are never touched.

Lightroom, Bridge, darktable and digiKam read dc:subject (keywords) and
lr:hierarchicalSubject ("Landmarks|Eiffel Tower") from a sidecar. An existing
sidecar (edits, ratings, the photographer's own keywords) is kept: lmrec adds its
keyword and replaces only the keyword it wrote before, which it remembers in
lmrec:label. A sidecar that lmrec cannot read or merge (not XML, a DOCTYPE, an
unexpected shape) raises BadSidecar and is left byte for byte as it was.

The merged sidecar is written with this module's own serializer: every namespace
gets a named prefix from an explicit per-file map (the file's own prefix, else the
usual XMP prefix for the URI, else one derived from the URI), so the output never
depends on ElementTree's process-wide prefix registry, and the text is parsed
back before it replaces the old file.
"""

from __future__ import annotations

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
    "lmrec": "https://github.com/lmrec/lmrec/ns/1.0/",
}
HIERARCHY_ROOT = "Landmarks"
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


def _bag(descriptions: list[ET.Element], prefix: str, name: str) -> ET.Element:
    """The rdf:Bag (or rdf:Seq) of a list property, created empty where the file has none."""
    tag = _tag(prefix, name)
    if any(tag in description.attrib for description in descriptions):
        raise BadSidecar(f"its {prefix}:{name} is a single value, not a list")
    holder = next((d.find(tag) for d in descriptions if d.find(tag) is not None), None)
    if holder is None:
        holder = ET.SubElement(descriptions[0], tag)
    containers = list(holder)
    if not containers and not holder.attrib and not (holder.text or "").strip():
        return ET.SubElement(holder, _tag("rdf", "Bag"))
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


def _set_value(descriptions: list[ET.Element], name: str, value: str) -> None:
    """Sets lmrec:name where the file has it (element or attribute), else adds an element."""
    tag = _tag("lmrec", name)
    for description in descriptions:
        if tag in description.attrib:
            description.set(tag, value)
            return
        element = description.find(tag)
        if element is not None:
            if len(element):
                raise BadSidecar(f"its lmrec:{name} is not a simple value")
            element.text = value
            return
    ET.SubElement(descriptions[0], tag).text = value


def _keywords(root: ET.Element) -> list[str]:
    for description in root.find(_tag("rdf", "RDF")).findall(_tag("rdf", "Description")):
        holder = description.find(_tag("dc", "subject"))
        if holder is not None:
            return [item.text or "" for item in holder.iter(_tag("rdf", "li"))]
    return []


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


def _merged(
    root: ET.Element, declared: list[tuple[str, str]], label: str, score: float, model: str
) -> str:
    """The packet text of root with label added, checked to read back with the label."""
    descriptions = _descriptions(root)
    old = _value(descriptions, _tag("lmrec", "label"))
    _set_item(_bag(descriptions, "dc", "subject"), label, old)
    _set_item(
        _bag(descriptions, "lr", "hierarchicalSubject"),
        f"{HIERARCHY_ROOT}|{label}",
        None if old is None else f"{HIERARCHY_ROOT}|{old}",
    )
    _set_value(descriptions, "label", label)
    _set_value(descriptions, "score", f"{score:.4f}")
    _set_value(descriptions, "model", model)
    ET.indent(root, space=" ")
    text = _PACKET_BEGIN + _serialize(root, _prefixes(_uris(root), declared)) + _PACKET_END
    if label not in _keywords(_parse(text.encode("utf-8"))[0]):
        raise BadSidecar("the merged text does not read back with the keyword")
    return text


def keywords(path: str) -> list[str]:
    """The dc:subject keywords of a sidecar (empty when it has none).

    Raises:
      BadSidecar: the file at path is not XMP lmrec can read.
    """
    return _keywords(_read(path)[0])


def write_keyword(path: str, label: str, score: float, model: str) -> None:
    """Adds label as a keyword to the sidecar at path (created when missing), atomically.

    Raises:
      BadSidecar: an existing file at path is not XMP lmrec can read or merge into; the
        file is not touched.
      OSError: the new text could not be written.
    """
    root, declared = _read(path) if os.path.exists(path) else (_empty_packet(), [])
    try:
        text = _merged(root, declared, label, score, model)
    except Exception as error:
        raise BadSidecar(
            f"sidecar {path} cannot take the keyword ({_reason(error)}); left as is"
        ) from None
    atomic.write_text(path, text)

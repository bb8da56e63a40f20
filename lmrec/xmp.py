"""XMP sidecar files carrying the landmark as a keyword; the photos themselves are never touched.

Lightroom, Bridge, darktable and digiKam read dc:subject (keywords) and
lr:hierarchicalSubject ("Landmarks|Eiffel Tower") from a sidecar. An existing
sidecar (edits, ratings, the photographer's own keywords) is kept: lmrec adds its
keyword and replaces only the keyword it wrote before, which it remembers in
lmrec:label. A sidecar that is not valid XMP is left alone and reported.
"""

from __future__ import annotations

import io
import os
import xml.etree.ElementTree as ET

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


class BadSidecar(Exception):
    """An existing sidecar lmrec cannot safely edit; str() says why."""


def _tag(prefix: str, name: str) -> str:
    return f"{{{NAMESPACES[prefix]}}}{name}"


def _register(extra: dict[str, str]) -> None:
    for prefix, uri in {**extra, **NAMESPACES}.items():
        if prefix:
            ET.register_namespace(prefix, uri)


def _empty_packet() -> ET.Element:
    root = ET.Element(_tag("x", "xmpmeta"))
    rdf = ET.SubElement(root, _tag("rdf", "RDF"))
    ET.SubElement(rdf, _tag("rdf", "Description"), {_tag("rdf", "about"): ""})
    return root


def _read(path: str) -> ET.Element:
    """Parses an existing sidecar, keeping the prefixes it uses."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        prefixes = dict(value for _, value in ET.iterparse(io.BytesIO(data), events=("start-ns",)))
        _register(prefixes)
        root = ET.fromstring(data)
    except (OSError, ET.ParseError) as error:
        raise BadSidecar(
            f"existing sidecar {path} is not readable XML ({error}); left as is"
        ) from None
    if root.tag == _tag("rdf", "RDF"):
        wrapper = ET.Element(_tag("x", "xmpmeta"))
        wrapper.append(root)
        root = wrapper
    if root.find(_tag("rdf", "RDF")) is None:
        raise BadSidecar(f"existing sidecar {path} has no rdf:RDF; left as is")
    return root


def _description(root: ET.Element) -> ET.Element:
    rdf = root.find(_tag("rdf", "RDF"))
    description = rdf.find(_tag("rdf", "Description"))
    if description is None:
        description = ET.SubElement(rdf, _tag("rdf", "Description"), {_tag("rdf", "about"): ""})
    return description


def _bag(description: ET.Element, prefix: str, name: str) -> ET.Element:
    holder = description.find(_tag(prefix, name))
    if holder is None:
        holder = ET.SubElement(description, _tag(prefix, name))
    bag = holder.find(_tag("rdf", "Bag"))
    if bag is None:
        bag = ET.SubElement(holder, _tag("rdf", "Bag"))
    return bag


def _set_item(bag: ET.Element, new: str, old: str | None) -> None:
    items = bag.findall(_tag("rdf", "li"))
    for item in items:
        if old is not None and item.text == old and old != new:
            bag.remove(item)
    if not any(item.text == new for item in bag.findall(_tag("rdf", "li"))):
        ET.SubElement(bag, _tag("rdf", "li")).text = new


def _set_value(description: ET.Element, name: str, value: str) -> None:
    element = description.find(_tag("lmrec", name))
    if element is None:
        element = ET.SubElement(description, _tag("lmrec", name))
    element.text = value


def keywords(path: str) -> list[str]:
    """The dc:subject keywords of a sidecar (empty when it has none)."""
    root = _read(path)
    bag = _description(root).find(f"{_tag('dc', 'subject')}/{_tag('rdf', 'Bag')}")
    return [] if bag is None else [item.text or "" for item in bag.findall(_tag("rdf", "li"))]


def write_keyword(path: str, label: str, score: float, model: str) -> None:
    """Adds label as a keyword to the sidecar at path (created when missing), atomically.

    Raises:
      BadSidecar: an existing file at path is not XMP lmrec can edit.
    """
    _register({})
    root = _read(path) if os.path.exists(path) else _empty_packet()
    description = _description(root)
    previous = description.find(_tag("lmrec", "label"))
    old = previous.text if previous is not None else None
    _set_item(_bag(description, "dc", "subject"), label, old)
    _set_item(
        _bag(description, "lr", "hierarchicalSubject"),
        f"{HIERARCHY_ROOT}|{label}",
        None if old is None else f"{HIERARCHY_ROOT}|{old}",
    )
    _set_value(description, "label", label)
    _set_value(description, "score", f"{score:.4f}")
    _set_value(description, "model", model)
    ET.indent(root, space=" ")
    text = _PACKET_BEGIN + ET.tostring(root, encoding="unicode") + _PACKET_END
    atomic.write_text(path, text)

"""XMP sidecars: every sidecar lmrec writes reads back; one it cannot merge is left as it was."""

import json
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from lmrec import photo_archive, predict, xmp
from lmrec.tag_store import Row

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
XMP = "http://ns.adobe.com/xap/1.0/"

# Sidecars whose RDF vocabulary, or the photographer's properties, sit in an XML default
# namespace: ElementTree alone would write them back with made-up ns0/ns2 prefixes.
DEFAULT_NAMESPACE_SIDECARS = {
    "rdf": (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><RDF xmlns="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="4"/>'
        "</RDF></x:xmpmeta>"
    ),
    "properties": (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns="http://ns.adobe.com/xap/1.0/">'
        "<Rating>4</Rating><CreatorTool>Camera 1.0</CreatorTool>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    ),
    "unknown namespace": (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about=""><Rating xmlns="http://ns.adobe.com/xap/1.0/">4</Rating>'
        '<Lens xmlns="http://example.com/camera/1.0/">50 mm</Lens>'
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    ),
}

# Adobe XMP Core's compact form: simple properties as attributes of rdf:Description.
LIGHTROOM = """<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000 1.000000   ">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:tiff="http://ns.adobe.com/tiff/1.0/"
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:stEvt="http://ns.adobe.com/xap/1.0/sType/ResourceEvent#"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
   xmp:Rating="3"
   xmp:Label="Red"
   tiff:Make="NIKON CORPORATION"
   exif:ExposureTime="1/250"
   crs:Version="15.0"
   crs:Exposure2012="+0.35"
   crs:HasCrop="False">
   <xmpMM:History>
    <rdf:Seq>
     <rdf:li stEvt:action="saved" stEvt:instanceID="xmp.iid:1"
      stEvt:when="2023-05-01T10:00:00+02:00" stEvt:changed="/metadata"/>
    </rdf:Seq>
   </xmpMM:History>
   <dc:title>
    <rdf:Alt>
     <rdf:li xml:lang="x-default">Evening &amp; night in Paris</rdf:li>
    </rdf:Alt>
   </dc:title>
   <dc:subject>
    <rdf:Bag>
     <rdf:li>Paris</rdf:li>
     <rdf:li>night</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>Places|France|Paris</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""

DARKTABLE = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
   exif:DateTimeOriginal="2023:05:01 10:00:00"
   xmp:Rating="1"
   xmpMM:DerivedFrom="DSC_0001.NEF"
   darktable:xmp_version="5"
   darktable:raw_params="0"
   darktable:auto_presets_applied="1"
   darktable:history_end="1"
   darktable:iop_order_version="4">
   <darktable:masks_history>
    <rdf:Seq/>
   </darktable:masks_history>
   <darktable:history>
    <rdf:Seq>
     <rdf:li
      darktable:num="0"
      darktable:operation="exposure"
      darktable:enabled="1"
      darktable:modversion="6"
      darktable:params="0000000000000000000000000000803f"
      darktable:multi_name=""
      darktable:multi_priority="0"
      darktable:blendop_version="13"
      darktable:blendop_params="gz08eJxjYIAACQYYMAGy4wbsEByQ"/>
    </rdf:Seq>
   </darktable:history>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>darktable|format|nef</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""

DIGIKAM = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:digiKam="http://www.digikam.org/ns/1.0/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:MicrosoftPhoto="http://ns.microsoft.com/photo/1.0/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
   xmp:Rating="4"
   MicrosoftPhoto:Rating="75">
   <digiKam:TagsList>
    <rdf:Seq>
     <rdf:li>Places/France/Paris</rdf:li>
     <rdf:li>People/Anna</rdf:li>
    </rdf:Seq>
   </digiKam:TagsList>
   <MicrosoftPhoto:LastKeywordXMP>
    <rdf:Bag>
     <rdf:li>Places/France/Paris</rdf:li>
    </rdf:Bag>
   </MicrosoftPhoto:LastKeywordXMP>
   <lr:hierarchicalSubject>
    <rdf:Bag>
     <rdf:li>Places|France|Paris</rdf:li>
     <rdf:li>People|Anna</rdf:li>
    </rdf:Bag>
   </lr:hierarchicalSubject>
   <dc:subject>
    <rdf:Bag>
     <rdf:li>Paris</rdf:li>
     <rdf:li>Anna</rdf:li>
    </rdf:Bag>
   </dc:subject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""

# Older Adobe tools write one rdf:Description per namespace.
SPLIT_DESCRIPTIONS = """<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xap="http://ns.adobe.com/xap/1.0/">
   <xap:Rating>2</xap:Rating>
  </rdf:Description>
  <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">
   <dc:subject><rdf:Bag><rdf:li>Rome</rdf:li></rdf:Bag></dc:subject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""

BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    + "".join(
        f' <!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">\n'
        for i in range(1, 10)
    )
    + ']>\n<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Bag><rdf:li>&lol9;</rdf:li>'
    "</rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>\n"
)


def _facts(text: str) -> set[tuple]:
    """Every element as (path of tags from the root, attributes, stripped text): what a sidecar
    says, independent of prefixes, indentation and attribute order."""
    found = set()

    def walk(element, path):
        path = (*path, element.tag)
        found.add((path, frozenset(element.attrib.items()), (element.text or "").strip()))
        for child in element:
            walk(child, path)

    walk(ET.fromstring(text.encode("utf-8")), ())
    return found


def _prefixes(text: str) -> set[str]:
    return {name.split(":", 1)[1] for name in text.split() if name.startswith("xmlns:")}


def _sidecar(tmp_path, text: str, name: str = "photo.xmp") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("shape", sorted(DEFAULT_NAMESPACE_SIDECARS))
def test_default_namespace_sidecar_merges_again_and_again(tmp_path, shape):
    path = _sidecar(tmp_path, DEFAULT_NAMESPACE_SIDECARS[shape])
    registry = dict(ET._namespace_map)  # ElementTree's process-wide prefix table
    xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo")
    second = _read(path)
    xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo")
    assert _read(path) == second  # stable from the first rewrite on
    xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo")
    assert _read(path) == second
    assert xmp.keywords(path) == ["Eiffel Tower"]
    assert second.count("Landmarks|Eiffel Tower") == 1
    assert ("xmp:Rating" in second) and (">4<" in second or 'Rating="4"' in second)
    assert not any(prefix.startswith("ns") and prefix[2:].isdigit() for prefix in _prefixes(second))
    assert 'xmlns="' not in second  # every namespace has a named prefix
    assert dict(ET._namespace_map) == registry


def test_unknown_default_namespace_gets_a_prefix_named_after_its_uri(tmp_path):
    path = _sidecar(tmp_path, DEFAULT_NAMESPACE_SIDECARS["unknown namespace"])
    xmp.write_keyword(path, "Louvre", 0.8, "demo")
    assert "<camera:Lens>50 mm</camera:Lens>" in _read(path)


def test_prefixes_of_one_sidecar_do_not_leak_into_the_next(tmp_path):
    first = _sidecar(
        tmp_path,
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:lens="http://example.com/camera/1.0/" lens:Focal="50"/>'
        "</rdf:RDF></x:xmpmeta>",
        "first.xmp",
    )
    second = _sidecar(tmp_path, DEFAULT_NAMESPACE_SIDECARS["unknown namespace"], "second.xmp")
    xmp.write_keyword(first, "Louvre", 0.8, "demo")
    xmp.write_keyword(second, "Louvre", 0.8, "demo")
    assert 'lens:Focal="50"' in _read(first)
    assert "lens" not in _prefixes(_read(second))


def test_sidecar_with_made_up_ns_prefixes_gets_the_usual_ones(tmp_path):
    path = _sidecar(
        tmp_path,
        '<x:xmpmeta xmlns:x="adobe:ns:meta/" xmlns:ns2="http://ns.adobe.com/xap/1.0/" '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:RDF>'
        "<rdf:Description><ns2:Rating>5</ns2:Rating></rdf:Description></rdf:RDF></x:xmpmeta>",
    )
    xmp.write_keyword(path, "Louvre", 0.8, "demo")
    assert "<xmp:Rating>5</xmp:Rating>" in _read(path)
    assert "ns2" not in _prefixes(_read(path))


def test_new_sidecar_reads_back_and_a_new_label_replaces_lmrecs_keyword(tmp_path):
    path = str(tmp_path / "photo.xmp")
    xmp.write_keyword(path, "Louvre", 0.8, "demo")
    assert xmp.keywords(path) == ["Louvre"]
    xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo")
    text = _read(path)
    assert xmp.keywords(path) == ["Eiffel Tower"]
    assert "Landmarks|Louvre" not in text and text.count("Landmarks|Eiffel Tower") == 1
    assert "<lmrec:score>0.9000</lmrec:score>" in text
    assert text.startswith("<?xpacket begin=") and text.endswith('<?xpacket end="w"?>\n')


@pytest.mark.parametrize("name", ["lightroom", "darktable", "digikam", "split descriptions"])
def test_real_tools_sidecars_keep_their_content(tmp_path, name):
    text = {
        "lightroom": LIGHTROOM,
        "darktable": DARKTABLE,
        "digikam": DIGIKAM,
        "split descriptions": SPLIT_DESCRIPTIONS,
    }[name]
    path = _sidecar(tmp_path, text)
    before = xmp.keywords(path)
    xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo")
    first = _read(path)
    xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo")
    assert _read(path) == first
    assert _facts(text) <= _facts(first)  # nothing the photographer had is lost
    assert xmp.keywords(path) == [*before, "Eiffel Tower"]
    assert first.count("<dc:subject>") == 1 and first.count("<lr:hierarchicalSubject>") == 1


def test_lightroom_compact_form_of_lmrecs_own_properties_is_updated_in_place(tmp_path):
    # Lightroom re-saves a sidecar with simple properties as attributes, lmrec's included.
    text = LIGHTROOM.replace(
        'xmlns:lr="http://ns.adobe.com/lightroom/1.0/"',
        'xmlns:lr="http://ns.adobe.com/lightroom/1.0/" '
        'xmlns:lmrec="https://github.com/lmrec/lmrec/ns/1.0/" '
        'lmrec:label="Louvre" lmrec:score="0.8000" lmrec:model="demo"',
    ).replace("<rdf:li>night</rdf:li>", "<rdf:li>night</rdf:li><rdf:li>Louvre</rdf:li>")
    path = _sidecar(tmp_path, text)
    xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo")
    written = _read(path)
    assert xmp.keywords(path) == ["Paris", "night", "Eiffel Tower"]
    assert 'lmrec:label="Eiffel Tower"' in written and "<lmrec:label>" not in written
    assert 'xmp:Rating="3"' in written and "Evening &amp; night in Paris" in written


@pytest.mark.parametrize(
    "content",
    [
        BILLION_LAUGHS.encode(),
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
        b"<!DOCTYPE x><x:xmpmeta xmlns:x='adobe:ns:meta/'/>",
    ],
    ids=["billion laughs", "external entity", "bare doctype"],
)
def test_sidecar_with_a_doctype_is_refused_unread_and_left_unchanged(tmp_path, content):
    path = tmp_path / "photo.xmp"
    path.write_bytes(content)
    start = time.monotonic()
    with pytest.raises(xmp.BadSidecar, match="DOCTYPE"):
        xmp.write_keyword(str(path), "Louvre", 0.8, "demo")
    assert time.monotonic() - start < 1.0
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    "content",
    [
        b"Not XML at all, a note someone saved as .xmp\n",
        bytes(range(256)) * 8,
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
        b"",
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="' + RDF.encode() + b'">'
        b"\xff\xfe</rdf:RDF></x:xmpmeta>",
        b"<html><body>not XMP</body></html>",
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="' + RDF.encode() + b'">'
        b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" dc:subject="Paris"/>'
        b"</rdf:RDF></x:xmpmeta>",
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="' + RDF.encode() + b'">'
        b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/">'
        b"<dc:subject>Paris</dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>",
    ],
    ids=[
        "text",
        "binary",
        "jpeg",
        "empty",
        "bad utf-8",
        "not xmp",
        "subject attribute",
        "subject text",
    ],
)
def test_sidecar_lmrec_cannot_merge_is_reported_and_left_unchanged(tmp_path, content):
    path = tmp_path / "photo.xmp"
    path.write_bytes(content)
    with pytest.raises(xmp.BadSidecar, match="left as is"):
        xmp.write_keyword(str(path), "Louvre", 0.8, "demo")
    assert path.read_bytes() == content
    assert os.listdir(tmp_path) == ["photo.xmp"]  # no temp file left behind


def test_sidecar_that_is_a_folder_is_reported_and_left_alone(tmp_path):
    folder = tmp_path / "photo.xmp"
    folder.mkdir()
    (folder / "inside.txt").write_text("kept")
    with pytest.raises(xmp.BadSidecar, match="left as is"):
        xmp.write_keyword(str(folder), "Louvre", 0.8, "demo")
    with pytest.raises(xmp.BadSidecar):
        xmp.keywords(str(folder))
    assert os.listdir(folder) == ["inside.txt"] and (folder / "inside.txt").read_text() == "kept"


def test_oversized_sidecar_is_not_read_into_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(xmp, "MAX_SIDECAR_BYTES", 100)
    path = _sidecar(tmp_path, LIGHTROOM)
    with pytest.raises(xmp.BadSidecar, match="larger than 100 bytes"):
        xmp.write_keyword(path, "Louvre", 0.8, "demo")
    assert _read(path) == LIGHTROOM


def test_label_that_xml_cannot_carry_is_refused_before_writing(tmp_path):
    path = tmp_path / "photo.xmp"
    with pytest.raises(xmp.BadSidecar):
        xmp.write_keyword(str(path), "bad\x00label", 0.8, "demo")
    assert not path.exists()


@pytest.mark.skipif(
    shutil.which("exiftool") is None,
    reason="exiftool is not installed (apt-get install libimage-exiftool-perl)",
)
@pytest.mark.parametrize("shape", ["new", "default namespace", "lightroom"])
def test_exiftool_reads_the_keyword(tmp_path, shape):
    path = str(tmp_path / "photo.xmp")
    if shape == "default namespace":
        path = _sidecar(tmp_path, DEFAULT_NAMESPACE_SIDECARS["properties"])
    elif shape == "lightroom":
        path = _sidecar(tmp_path, LIGHTROOM)
    xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo")
    xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo")
    command = ["exiftool", "-j", "-XMP:Subject", "-XMP:HierarchicalSubject", "-XMP:TagsList"]
    command += ["-XMP:Rating", path]
    found = json.loads(subprocess.run(command, capture_output=True, check=True, text=True).stdout)
    tags = found[0]

    def listed(value):
        return value if isinstance(value, list) else [value]

    assert "Eiffel Tower" in listed(tags["Subject"])
    assert "Landmarks|Eiffel Tower" in listed(tags["HierarchicalSubject"])
    assert "Landmarks/Eiffel Tower" in listed(tags["TagsList"])
    if shape != "new":
        assert tags["Rating"] in (3, 4)


def _result(**fields) -> predict.PredictResult:
    return predict.PredictResult(**fields)


def test_exit_status_counts_failures_missing_paths_and_sidecar_errors():
    assert predict.exit_status(_result()) == 0
    assert predict.exit_status(_result(ignored=[{"file": "a.txt", "reason": "not an image"}])) == 0
    assert predict.exit_status(_result(failures=[{"file": "a.jpg", "reason": "truncated"}])) == 1
    missing = [{"file": "gone", "reason": "no such file or folder"}]
    assert predict.exit_status(_result(ignored=missing)) == 1
    unwritten = [{"file": "a.xmp", "reason": "existing sidecar a.xmp is not readable XMP"}]
    assert predict.exit_status(_result(sidecar_errors=unwritten)) == 1


def test_any_error_of_one_sidecar_is_reported_and_the_others_are_written(tmp_path, monkeypatch):
    write_keyword = xmp.write_keyword

    def flaky(path, label, score, model, location=None):
        if path.endswith("a.xmp"):
            raise RuntimeError("disk on fire")
        write_keyword(path, label, score, model, location=location)

    monkeypatch.setattr(xmp, "write_keyword", flaky)
    rows = [Row(str(tmp_path / name), label="Louvre", score=0.8) for name in ("a.jpg", "b.jpg")]
    result = predict.PredictResult()
    for row in rows:
        Image.new("RGB", (8, 8)).save(row.file)
    scan = photo_archive.scan([row.file for row in rows])
    predict._write_sidecars(rows, scan, "demo", result)
    assert result.sidecar_errors == [
        {"file": str(tmp_path / "a.xmp"), "reason": "RuntimeError('disk on fire')"}
    ]
    assert xmp.keywords(str(tmp_path / "b.xmp")) == ["Louvre"]
    assert predict.exit_status(result) == 1


# --- digiKam:TagsList, GPS location, sidecar folder ---------------------------------------

EIFFEL = (48.858370, 2.294481)
LOUVRE = (48.860611, 2.337644)
EXIF = "http://ns.adobe.com/exif/1.0/"
LMREC = xmp.NAMESPACES["lmrec"]


def _gps_sidecar(tmp_path, properties: str, namespaces: str = "") -> str:
    """A sidecar whose rdf:Description carries properties (attributes and elements)."""
    attributes, _, elements = properties.partition(">")
    return _sidecar(
        tmp_path,
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="' + RDF + '">'
        '<rdf:Description rdf:about="" xmlns:exif="' + EXIF + '" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/" ' + namespaces + " " + attributes + ">"
        "<dc:subject><rdf:Bag><rdf:li>holiday</rdf:li></rdf:Bag></dc:subject>"
        + elements
        + "</rdf:Description></rdf:RDF></x:xmpmeta>",
    )


def _top_level(path: str, uri: str, name: str) -> str | None:
    """The value of a property directly on the sidecar's rdf:Description(s)."""
    root = ET.parse(path).getroot()
    for description in root.iter(f"{{{RDF}}}Description"):
        if f"{{{uri}}}{name}" in description.attrib:
            return description.get(f"{{{uri}}}{name}")
        element = description.find(f"{{{uri}}}{name}")
        if element is not None:
            return element.text
    return None


def _lists(path: str) -> dict[str, list[str]]:
    root = ET.parse(path).getroot()
    return {name: xmp._keywords(root, prefix, name) for prefix, name, _, _ in xmp.KEYWORD_LISTS}


def test_keyword_goes_into_subject_hierarchical_subject_and_digikam_tagslist(tmp_path):
    path = str(tmp_path / "photo.xmp")
    assert xmp.write_keyword(path, "Louvre", 0.8, "demo") is False
    assert _lists(path) == {
        "subject": ["Louvre"],
        "hierarchicalSubject": ["Landmarks|Louvre"],
        "TagsList": ["Landmarks/Louvre"],
    }
    assert "<digiKam:TagsList>\n    <rdf:Seq>" in _read(path)  # digiKam's own container


def test_new_label_replaces_lmrecs_entry_in_all_three_lists_and_keeps_the_users(tmp_path):
    path = _sidecar(tmp_path, DIGIKAM)
    xmp.write_keyword(path, "Louvre", 0.8, "demo")
    xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo")
    assert _lists(path) == {
        "subject": ["Paris", "Anna", "Eiffel Tower"],
        "hierarchicalSubject": ["Places|France|Paris", "People|Anna", "Landmarks|Eiffel Tower"],
        "TagsList": ["Places/France/Paris", "People/Anna", "Landmarks/Eiffel Tower"],
    }


def test_tagslist_that_is_not_a_list_is_refused_and_left_unchanged(tmp_path):
    content = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="' + RDF + '">'
        '<rdf:Description xmlns:digiKam="http://www.digikam.org/ns/1.0/" digiKam:TagsList="a/b"/>'
        "</rdf:RDF></x:xmpmeta>"
    ).encode()
    path = tmp_path / "photo.xmp"
    path.write_bytes(content)
    with pytest.raises(xmp.BadSidecar, match="TagsList is a single value"):
        xmp.write_keyword(str(path), "Louvre", 0.8, "demo", location=LOUVRE)
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    ("value", "axis", "text"),
    [
        (48.858370, "latitude", "48,51.502200N"),
        (2.294481, "longitude", "2,17.668860E"),
        (-33.856784, "latitude", "33,51.407040S"),
        (-151.215297, "longitude", "151,12.917820W"),
        (0.0, "latitude", "0,00.000000N"),
        (-0.0000001, "longitude", "0,00.000006W"),
        (10.99999999999, "latitude", "11,00.000000N"),  # minutes never round to 60
        (-90.0, "latitude", "90,00.000000S"),
        (180.0, "longitude", "180,00.000000E"),
    ],
)
def test_gps_coordinate_is_xmps_degrees_and_decimal_minutes(value, axis, text):
    assert xmp.gps_coordinate(value, axis) == text
    assert xmp._degrees(text, axis) == pytest.approx(value, abs=1e-8)


@pytest.mark.parametrize(
    ("text", "axis", "value"),
    [
        ("48,51,30.132N", "latitude", 48 + 51 / 60 + 30.132 / 3600),
        ("151,12.91782W", "longitude", -(151 + 12.91782 / 60)),
        ("33,51.40704s", "latitude", -(33 + 51.40704 / 60)),
        ("-22.951916", "latitude", -22.951916),
        ("43.210487W", "longitude", -43.210487),
        ("48,61.0N", "latitude", None),  # 61 minutes
        ("48,51.5E", "latitude", None),  # a longitude's direction
        ("91,00.0N", "latitude", None),
        ("-43.2W", "longitude", None),  # sign and direction
        ("Paris", "latitude", None),
        ("", "latitude", None),
    ],
)
def test_gps_coordinates_are_read_in_every_form_xmp_allows(text, axis, value):
    parsed = xmp._degrees(text, axis)
    assert parsed == (None if value is None else pytest.approx(value, abs=1e-12))


@pytest.mark.parametrize(
    ("value", "axis"), [(90.5, "latitude"), (-181, "longitude"), (float("nan"), "latitude")]
)
def test_location_outside_the_globe_is_refused_before_anything_is_written(tmp_path, value, axis):
    path = tmp_path / "photo.xmp"
    location = (value, 0.0) if axis == "latitude" else (0.0, value)
    with pytest.raises(ValueError, match=axis):
        xmp.write_keyword(str(path), "Louvre", 0.8, "demo", location=location)
    assert not path.exists()


def test_new_sidecar_gets_keyword_and_location_in_one_write(tmp_path):
    path = str(tmp_path / "photo.xmp")
    assert xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo", location=EIFFEL) is True
    first = _read(path)
    assert xmp.location(path) == pytest.approx(EIFFEL, abs=1e-8)
    assert _top_level(path, EXIF, "GPSLatitude") == "48,51.502200N"
    assert _top_level(path, EXIF, "GPSVersionID") == "2.3.0.0"
    assert _top_level(path, EXIF, "GPSMapDatum") == "WGS-84"
    assert _top_level(path, LMREC, "locatedFrom") == "landmark"
    assert xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo", location=EIFFEL) is True
    assert _read(path) == first  # stable
    assert xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo") is False
    assert xmp.location(path) == pytest.approx(EIFFEL, abs=1e-8)  # same label: it stays


def test_lmrecs_own_location_follows_the_label(tmp_path):
    path = str(tmp_path / "photo.xmp")
    xmp.write_keyword(path, "Louvre", 0.8, "demo", location=LOUVRE)
    assert xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo", location=EIFFEL) is True
    assert xmp.location(path) == pytest.approx(EIFFEL, abs=1e-8)
    assert _read(path).count("GPSLatitude") == 2  # one property: open and close tag
    xmp.write_keyword(path, "Notre-Dame", 0.7, "demo")  # no location known for it
    assert xmp.location(path) is None
    text = _read(path)
    assert "GPS" not in text and "locatedFrom" not in text and "lmrec:location" not in text


@pytest.mark.parametrize(
    "properties",
    [
        'exif:GPSLatitude="48,51.1234N" exif:GPSLongitude="2,17.5000E">',
        "><exif:GPSLatitude>48,51,7.4N</exif:GPSLatitude>"
        "<exif:GPSLongitude>2,17,30E</exif:GPSLongitude>",
        'exif:GPSLatitude="not a place">',
        'exif:GPSAltitude="35/1">',  # a GPS property without a position is the user's too
        'drone-dji:GpsLatitude="48.8521" drone-dji:GpsLongitude="2.2917">',
        '><Iptc4xmpExt:LocationShown><rdf:Bag><rdf:li rdf:parseType="Resource">'
        "<exif:GPSLatitude>48,51.1234N</exif:GPSLatitude>"
        "<exif:GPSLongitude>2,17.5000E</exif:GPSLongitude>"
        "</rdf:li></rdf:Bag></Iptc4xmpExt:LocationShown>",
    ],
    ids=["compact", "elements dms", "unreadable", "altitude", "drone", "iptc location shown"],
)
def test_a_location_the_sidecar_has_is_never_overwritten(tmp_path, properties):
    namespaces = (
        'xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/" '
        'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
    )
    path = _gps_sidecar(tmp_path, properties, namespaces)
    before = _facts(_read(path))
    assert xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo", location=EIFFEL) is False
    after = _read(path)
    assert before <= _facts(after)
    assert "locatedFrom" not in after and "GPSVersionID" not in after
    assert "2.294481" not in after and "17.668860" not in after
    assert xmp.keywords(path) == ["holiday", "Eiffel Tower"]


def test_location_reads_the_sidecars_position_in_any_form(tmp_path):
    assert xmp.location(str(tmp_path / "none.xmp")) is None  # no sidecar, no location
    assert xmp.location(_sidecar(tmp_path, LIGHTROOM)) is None
    dms = _gps_sidecar(tmp_path, 'exif:GPSLatitude="48,51,7.4N" exif:GPSLongitude="2,17,30W">')
    assert xmp.location(dms) == pytest.approx((48 + 51 / 60 + 7.4 / 3600, -(2 + 17.5 / 60)))
    drone = _gps_sidecar(
        tmp_path,
        'drone-dji:GpsLatitude="-22.951916" drone-dji:GpsLongitude="-43.210487">',
        'xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/"',
    )
    assert xmp.location(drone) == pytest.approx((-22.951916, -43.210487))
    broken = _gps_sidecar(tmp_path, 'exif:GPSLatitude="48,51.1N">')  # no longitude
    with pytest.raises(xmp.BadSidecar, match="GPS position"):
        xmp.location(broken)


def test_a_location_the_user_moved_after_lmrec_wrote_it_is_theirs(tmp_path):
    path = str(tmp_path / "photo.xmp")
    xmp.write_keyword(path, "Louvre", 0.8, "demo", location=LOUVRE)
    text = _read(path).replace("48,51.636660N", "48,51.7N")  # moved the pin in a photo app
    _sidecar(tmp_path, text)
    assert xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo", location=EIFFEL) is False
    assert xmp.location(path) == pytest.approx((48 + 51.7 / 60, LOUVRE[1]), abs=1e-8)
    assert "locatedFrom" not in _read(path)  # lmrec no longer claims it
    xmp.write_keyword(path, "Notre-Dame", 0.7, "demo")
    assert xmp.location(path) == pytest.approx((48 + 51.7 / 60, LOUVRE[1]), abs=1e-8)


def test_lightroom_sidecar_takes_a_location_and_keeps_its_content(tmp_path):
    path = _sidecar(tmp_path, LIGHTROOM)
    assert xmp.write_keyword(path, "Eiffel Tower", 0.9, "demo", location=EIFFEL) is True
    assert _facts(LIGHTROOM) <= _facts(_read(path))
    assert xmp.location(path) == pytest.approx(EIFFEL, abs=1e-8)


def _touch(root, *names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_sidecar_dir_mirrors_each_input_under_its_own_name(tmp_path):
    trip, home = tmp_path / "2024" / "trip", tmp_path / "home"
    _touch(trip, "day 1/DSC_1.JPG", "day 1/DSC_1.NEF", "IMG_2.jpg", "IMG_2.png")
    _touch(home, "Cầu Rồng.jpg")
    out = str(tmp_path / "sidecars")
    found = photo_archive.scan([str(trip), str(home)], sidecar_dir=out)
    assert found.sidecars == {
        str(trip / "IMG_2.jpg"): os.path.join(out, "trip", "IMG_2.jpg.xmp"),
        str(trip / "IMG_2.png"): os.path.join(out, "trip", "IMG_2.png.xmp"),
        str(trip / "day 1" / "DSC_1.JPG"): os.path.join(out, "trip", "day 1", "DSC_1.xmp"),
        str(home / "Cầu Rồng.jpg"): os.path.join(out, "home", "Cầu Rồng.xmp"),
    }
    assert found.raw_twins == {str(trip / "day 1" / "DSC_1.NEF"): str(trip / "day 1" / "DSC_1.JPG")}


def test_sidecar_dir_keeps_inputs_of_the_same_name_apart_whatever_their_order(tmp_path):
    first, second = tmp_path / "a" / "photos", tmp_path / "b" / "photos"
    _touch(first, "IMG_1.jpg")
    _touch(second, "IMG_1.jpg")
    out = str(tmp_path / "sidecars")
    forward = photo_archive.scan([str(first), str(second)], sidecar_dir=out).sidecars
    backward = photo_archive.scan([str(second), str(first)], sidecar_dir=out).sidecars
    assert forward == backward
    one, two = forward[str(first / "IMG_1.jpg")], forward[str(second / "IMG_1.jpg")]
    assert one != two
    for path in (one, two):
        folder = os.path.relpath(os.path.dirname(path), out)
        assert len(folder) == len("photos-") + 8 and folder.startswith("photos-")


def test_sidecar_dir_puts_a_photo_of_nested_inputs_under_the_outermost(tmp_path):
    outer = tmp_path / "Pictures"
    _touch(outer, "paris/IMG_1.jpg")
    out = str(tmp_path / "sidecars")
    for inputs in ([outer / "paris", outer], [outer, outer / "paris"]):
        mirror = photo_archive.SidecarDir.for_inputs(out, [str(p) for p in inputs])
        assert mirror.roots == {str(outer): "Pictures"}
        placed = mirror.place(str(outer / "paris" / "IMG_1.xmp"))
        assert placed == os.path.join(out, "Pictures", "paris", "IMG_1.xmp")


def test_sidecar_dir_of_named_files_mirrors_their_folders(tmp_path):
    _touch(tmp_path, "trip/IMG_1.jpg", "home/IMG_9.jpg", "home/more/IMG_3.jpg")
    out = str(tmp_path / "sidecars")
    inputs = [str(tmp_path / name) for name in ("trip/IMG_1.jpg", "home/IMG_9.jpg", "home/more")]
    assert photo_archive.scan(inputs, sidecar_dir=out).sidecars == {
        inputs[0]: os.path.join(out, "trip", "IMG_1.xmp"),
        inputs[1]: os.path.join(out, "home", "IMG_9.xmp"),
        str(tmp_path / "home/more/IMG_3.jpg"): os.path.join(out, "home", "more", "IMG_3.xmp"),
    }
    mirror = photo_archive.SidecarDir.for_inputs(out, inputs)
    with pytest.raises(ValueError, match="under none of the inputs"):
        mirror.place("/elsewhere/IMG_1.xmp")


def test_sidecar_in_a_new_sidecar_folder_is_written_with_its_folders(tmp_path):
    _touch(tmp_path / "trip", "deep/er/IMG_1.jpg")
    out = tmp_path / "sidecars"
    found = photo_archive.scan([str(tmp_path / "trip")], sidecar_dir=str(out))
    xmp.write_keyword(found.sidecars[str(tmp_path / "trip/deep/er/IMG_1.jpg")], "Louvre", 0.8, "m")
    assert xmp.keywords(str(out / "trip" / "deep" / "er" / "IMG_1.xmp")) == ["Louvre"]

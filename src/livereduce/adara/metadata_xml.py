"""The XML inside ADARA device descriptor and run info packets: written by the replay server,
read by the adara listener.

Layouts follow ADARA doc/design (device.xsd, runinfo.xsd) as the SMS sends them and as
Mantid's SNSLiveEventDataListener reads them (mantid-live-data.md §3.2.4): a device is
``<device><device_name/><process_variables><process_variable><pv_name/><pv_id/><pv_type/>
<pv_units/>``; a run info is ``<runinfo><run_number/><proposal_id/><run_title/>``. Readers
ignore XML namespaces, as Mantid does.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass

DEVICE_NS = "http://public.sns.gov/schema/device.xsd"
RUNINFO_NS = "http://public.sns.gov/schema/runinfo.xsd"
INTEGER_PV_TYPES = frozenset({"integer", "int", "enum"})
"""pv_type values whose u32 variable values are signed 32-bit integers (Mantid: TSP<int>)."""


class MetadataXmlError(ValueError):
    """A descriptor or run info XML that cannot be read; the message says what is wrong."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessVariable:
    """One PV of a device descriptor: ``pv_id`` (variable ID in variable value packets),
    ``name`` (the log name), ``pv_type`` (``double``, ``integer``, ``unsigned integer``,
    ``string``, ``enum_*``) and ``units`` (may be empty)."""

    pv_id: int
    name: str
    pv_type: str
    units: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInfoXml:
    """What livereduce reads from a run info packet."""

    run_number: int | None
    proposal_id: str
    run_title: str


def device_xml(device_name: str, variables: Iterable[ProcessVariable]) -> str:
    """The descriptor XML of one device with its PVs."""
    root = ET.Element("device", xmlns=DEVICE_NS)
    ET.SubElement(root, "device_name").text = device_name
    pvs = ET.SubElement(root, "process_variables")
    for pv in variables:
        node = ET.SubElement(pvs, "process_variable")
        ET.SubElement(node, "pv_name").text = pv.name
        ET.SubElement(node, "pv_id").text = str(pv.pv_id)
        ET.SubElement(node, "pv_type").text = pv.pv_type
        if pv.units:
            ET.SubElement(node, "pv_units").text = pv.units
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


def runinfo_xml(run_number: int, proposal_id: str, run_title: str) -> str:
    """The run info XML of a run."""
    root = ET.Element("runinfo", xmlns=RUNINFO_NS)
    ET.SubElement(root, "facility_name").text = "SNS"
    ET.SubElement(root, "proposal_id").text = proposal_id
    ET.SubElement(root, "run_number").text = str(run_number)
    ET.SubElement(root, "run_title").text = run_title
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


def _parse(xml: str, what: str) -> ET.Element:
    try:
        # the SMS is the beamline's own service; expat refuses entity-expansion bombs anyway
        root = ET.fromstring(xml)  # noqa: S314
    except ET.ParseError as exc:
        raise MetadataXmlError(f"{what} XML is not well-formed: {exc}") from exc
    for node in root.iter():
        node.tag = node.tag.rpartition("}")[2]
    return root


def parse_device_xml(xml: str) -> tuple[str, tuple[ProcessVariable, ...]]:
    """(device name, PVs) of a device descriptor XML. Raises MetadataXmlError when the XML is
    not well-formed or a PV lacks a name or a numeric ID."""
    root = _parse(xml, "device descriptor")
    name = (root.findtext("device_name") or "").strip()
    pvs = []
    for node in root.iterfind("process_variables/process_variable"):
        pv_name = (node.findtext("pv_name") or "").strip()
        pv_id = (node.findtext("pv_id") or "").strip()
        if not pv_name or not pv_id.isdigit():
            raise MetadataXmlError(
                f"device {name!r}: process_variable without pv_name or numeric pv_id"
            )
        pvs.append(
            ProcessVariable(
                pv_id=int(pv_id),
                name=pv_name,
                pv_type=(node.findtext("pv_type") or "double").strip(),
                units=(node.findtext("pv_units") or "").strip(),
            )
        )
    return name, tuple(pvs)


def parse_runinfo_xml(xml: str) -> RunInfoXml:
    """Run number, proposal ID and title of a run info XML (missing elements give None / "").
    Raises MetadataXmlError when the XML is not well-formed."""
    root = _parse(xml, "run info")
    number = (root.findtext("run_number") or "").strip()
    return RunInfoXml(
        run_number=int(number) if number.isdigit() else None,
        proposal_id=(root.findtext("proposal_id") or "").strip(),
        run_title=(root.findtext("run_title") or "").strip(),
    )


def clean_text(text: str) -> tuple[str, bool]:
    """``text`` with the bytes that were not UTF-8 (kept by the packet decoder as
    ``surrogateescape`` surrogates) replaced by U+FFFD; True when something was replaced.
    Such text cannot be written to HDF5 or parsed as XML; replaced, it loses one character
    instead of the whole value."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), True
    return text, False


def pixel_id_ranges(idf_xml: str) -> tuple[tuple[int, int], ...]:
    """The detector pixel IDs an instrument definition (Mantid IDF) declares, as inclusive
    ``(first, last)`` ranges: ``<idlist>`` entries (``<id start= end=>``, ``<id val=>``) and
    rectangular detectors (``idstart`` on the component, ``xpixels`` x ``ypixels`` on its
    ``rectangular_detector`` type). Negative IDs (monitors) are left out. Empty when the XML is
    empty or declares none; raises MetadataXmlError when it is not well-formed.
    Source: Mantid's IDF schema (IDFSchema.xsd, ``idlist`` and ``rectangular_detector``)."""
    if not idf_xml.strip():
        return ()
    root = _parse(idf_xml, "instrument definition")
    ranges: list[tuple[int, int]] = []
    for node in root.iter("id"):
        try:
            if "val" in node.attrib:
                first = last = int(node.attrib["val"])
            else:
                first, last = int(node.attrib["start"]), int(node.attrib["end"])
        except (KeyError, ValueError):
            continue
        if last >= 0:
            ranges.append((max(first, 0), last))
    pixels = {}
    for node in root.iter("type"):
        if node.get("is", "").lower().replace("_", "") == "rectangulardetector":
            try:
                pixels[node.get("name")] = int(node.get("xpixels", "")) * int(
                    node.get("ypixels", "")
                )
            except ValueError:
                continue
    for node in root.iter("component"):
        count = pixels.get(node.get("type"))
        start = node.get("idstart")
        if count and start is not None and start.lstrip("-").isdigit():
            ranges.append((int(start), int(start) + count - 1))
    return tuple(sorted(ranges))

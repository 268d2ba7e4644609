"""The SNS and HFIR instruments livereduce knows: name, short name, beamline, live address.

Source: the SNS and HFIR sections of Mantid's ``instrument/Facilities.xml`` (attributes
``name``, ``shortname``, ``beamline`` and the ``<livedata><connection address=...>`` of each
instrument). SNS data-acquisition hosts follow ``bl<beamline>-daq1.sns.gov`` and serve the
ADARA live stream on port 31415 (the SMS ``livestream`` service). HFIR beamlines use the same
ADARA stream; their hosts follow the same naming with the HFIR beamline (``cg2``, ``hb2c``...).
A site whose host differs sets the ``address`` key in the configuration, which always wins.
"""

from __future__ import annotations

from dataclasses import dataclass

ADARA_PORT = 31415
"""TCP port of the SMS live stream (smsd.conf ``[livestream] service = 31415``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Instrument:
    """One instrument: ``name`` as Mantid spells it, ``short_name`` as used in file and script
    names (``reduce_<short_name>_live_proc.py``), ``facility``, ``beamline`` and the
    ``live_address`` (``host:port``) of its ADARA stream."""

    name: str
    short_name: str
    facility: str
    beamline: str
    live_address: str
    pixel_ids: tuple[int, int] | None = None
    """The detector pixel IDs (first, last, inclusive) where known, from the instrument's
    definition as embedded in its NeXus files (HYSPEC: idlist "Tank" 0..20479; REF_L: the
    256 x 304 rectangular detector from ID 0); the adara listener uses them when the stream
    sends no geometry. None: taken from the stream's geometry only."""


def _sns(
    name: str, short: str, beamline: str, pixel_ids: tuple[int, int] | None = None
) -> Instrument:
    return Instrument(
        name=name,
        short_name=short,
        facility="SNS",
        beamline=beamline,
        live_address=f"bl{beamline.lower()}-daq1.sns.gov:{ADARA_PORT}",
        pixel_ids=pixel_ids,
    )


def _hfir(name: str, short: str, beamline: str) -> Instrument:
    return Instrument(
        name=name,
        short_name=short,
        facility="HFIR",
        beamline=beamline,
        live_address=f"{beamline.lower()}-daq1.ornl.gov:{ADARA_PORT}",
    )


INSTRUMENTS: tuple[Instrument, ...] = (
    _sns("USANS", "USANS", "1A"),
    _sns("NOMAD", "NOM", "1B"),
    _sns("BASIS", "BSS", "2"),
    _sns("SNAP", "SNAP", "3"),
    _sns("REF_M", "REF_M", "4A"),
    _sns("REF_L", "REF_L", "4B", (0, 77823)),
    _sns("CNCS", "CNCS", "5"),
    _sns("EQ-SANS", "EQSANS", "6"),
    _sns("VULCAN", "VULCAN", "7"),
    _sns("CORELLI", "CORELLI", "9"),
    _sns("VENUS", "VENUS", "10"),
    _sns("POWGEN", "PG3", "11A"),
    _sns("MANDI", "MANDI", "11B"),
    _sns("TOPAZ", "TOPAZ", "12"),
    _sns("HYSPEC", "HYS", "14B", (0, 20479)),
    _sns("VISION", "VIS", "16B"),
    _sns("SEQUOIA", "SEQ", "17"),
    _sns("ARCS", "ARCS", "18"),
    _hfir("HB2A", "HB2A", "HB2A"),
    _hfir("HIDRA", "HB2B", "HB2B"),
    _hfir("WAND", "HB2C", "HB2C"),
    _hfir("DEMAND", "HB3A", "HB3A"),
    _hfir("IMAGING", "CG1D", "CG1D"),
    _hfir("GPSANS", "CG2", "CG2"),
    _hfir("BIOSANS", "CG3", "CG3"),
)


def find_instrument(name: str) -> Instrument | None:
    """The instrument whose name or short name is ``name`` (case-insensitive), else None."""
    wanted = name.strip().upper()
    for instrument in INSTRUMENTS:
        if wanted in (instrument.name.upper(), instrument.short_name.upper()):
            return instrument
    return None

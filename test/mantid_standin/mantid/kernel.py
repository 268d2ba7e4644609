"""STAND-IN for tests, not Mantid: ``mantid.kernel.ConfigService`` and instrument lookup.

A handful of instruments as Mantid's ``instrument/Facilities.xml`` lists them (name, short
name, facility, default live listener and address), enough to exercise facility switching and
the listeners with and without dynamic properties.
"""

from __future__ import annotations

from dataclasses import dataclass

from mantid import _standin


@dataclass(frozen=True)
class FacilityInfo:
    """``mantid.kernel.FacilityInfo``: only ``name()``."""

    _name: str

    def name(self) -> str:
        return self._name


@dataclass(frozen=True)
class InstrumentInfo:
    """``mantid.kernel.InstrumentInfo``: name, short name, facility and the default live
    connection (listener class, address)."""

    _name: str
    _short_name: str
    _facility: str
    listener: str
    address: str

    def name(self) -> str:
        return self._name

    def shortName(self) -> str:
        return self._short_name

    def facility(self) -> FacilityInfo:
        return FacilityInfo(self._facility)


_SNS = "SNSLiveEventDataListener"
INSTRUMENTS = tuple(
    InstrumentInfo(*row)
    for row in (
        ("POWGEN", "PG3", "SNS", _SNS, "bl11a-daq1.sns.gov:31415"),
        ("NOMAD", "NOM", "SNS", _SNS, "bl1b-daq1.sns.gov:31415"),
        ("HYSPEC", "HYS", "SNS", _SNS, "bl14b-daq1.sns.gov:31415"),
        ("REF_L", "REF_L", "SNS", _SNS, "bl4b-daq1.sns.gov:31415"),
        ("GPSANS", "CG2", "HFIR", _SNS, "cg2-daq1.ornl.gov:31415"),
        ("MARI", "MAR", "ISIS", "ISISHistoDataListener", "NDXMARI:6789"),
        (
            "ISIS_Histogram",
            "ISIS_Histogram",
            "TEST_LIVE",
            "ISISHistoDataListener",
            "localhost:56789",
        ),
        ("ADARA_FakeEvent", "ADARA_FakeEvent", "TEST_LIVE", "FakeEventDataListener", "127.0.0.1:0"),
        (
            "ADARA_FileReader",
            "ADARA_FileReader",
            "TEST_LIVE",
            "FileEventDataListener",
            "127.0.0.1:0",
        ),
    )
)
FACILITIES = ("ISIS", "SNS", "HFIR", "TEST_LIVE")


class _ConfigService:
    """``mantid.kernel.ConfigService`` (the singleton instance): properties by key, the
    default facility and instrument lookup."""

    def __init__(self) -> None:
        self._properties = {"default.facility": "SNS", "default.instrument": ""}

    def __getitem__(self, key: str) -> str:
        _standin.record("ConfigService.__getitem__", key=key)
        return self._properties.get(key, "")

    def __setitem__(self, key: str, value: str) -> None:
        _standin.record("ConfigService.__setitem__", key=key, value=value)
        if not isinstance(value, str):
            raise TypeError(f"ConfigService values are strings, got {value!r} for {key}")
        self._properties[key] = value

    def getFacility(self) -> FacilityInfo:
        _standin.record("ConfigService.getFacility")
        return FacilityInfo(self._properties["default.facility"])

    def setFacility(self, name: str) -> None:
        _standin.record("ConfigService.setFacility", name=name)
        if name not in FACILITIES:
            raise RuntimeError(f"Facility '{name}' not found")
        self._properties["default.facility"] = name

    def getInstrument(self, name: str | None = None) -> InstrumentInfo:
        _standin.record("ConfigService.getInstrument", name=name)
        wanted = (name or self._properties["default.instrument"]).upper()
        for info in INSTRUMENTS:
            if wanted in (info.name().upper(), info.shortName().upper()):
                return info
        raise RuntimeError(f"FacilityInfo search object {name} not found")

    def get(self, key: str) -> str:
        """Unrecorded read, for the stand-in's own algorithms."""
        return self._properties.get(key, "")


ConfigService = _ConfigService()

"""The device catalog: what one accelerator is (peak FLOP/s per dtype, memory, scale-up link, power,
price), read from `hwmodels/data/devices.yaml`, where every figure carries its source.

    get_device("h100").peak("bf16")   # 989e12 dense FLOP/s

Names are case-insensitive; aliases (e.g. "a100" for "a100-sxm-80g") resolve to the catalog entry.
Figures that no usable source gave are None and listed in `Device.unknown`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from hwmodels.errors import InputError, unknown_name

DTYPES = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "fp4", "int8")
KINDS = ("gpu", "npu", "tpu")
# Directories with measured kernel tables under aiconfigurator_core/systems/data in
# aiconfigurator-core==0.12.0 (a100_pcie, h100_pcie, l4 and a30 are empty there).
KERNEL_PROFILES = ("a100_sxm", "b200_sxm", "b300_sxm", "b60", "gb200", "gb300", "h100_sxm",
                   "h200_sxm", "l40s", "rtx_pro_6000_server")

_CATALOG_FILE = Path(__file__).parent / "data" / "devices.yaml"
_NUMBER_FIELDS = ("hbm_bytes", "hbm_bytes_per_s", "scale_up_bytes_per_s", "power_w", "price_per_hour")
_FIELDS = ("vendor", "kind", "aliases", "peak_flops", *_NUMBER_FIELDS, "scale_up", "kernel_profile",
           "efficiency_from", "host_bytes_per_s", "sources", "unknown")


@dataclass(frozen=True)
class Device:
    """One accelerator. FLOP/s are dense; bandwidths are bytes/s, links per direction."""

    name: str
    vendor: str
    kind: str  # gpu | npu | tpu
    peak_flops: dict = field(hash=False)  # dtype -> dense FLOP/s (OP/s for int8)
    hbm_bytes: float | None
    hbm_bytes_per_s: float | None
    scale_up: str  # human-readable description of the scale-up link
    scale_up_bytes_per_s: float | None  # per device, per direction
    power_w: float | None
    price_per_hour: float | None  # USD per device-hour
    kernel_profile: str | None  # aiconfigurator-core data dir with measured kernel tables
    efficiency_from: str | None  # catalog device whose kernel efficiencies stand in for this one
    aliases: tuple = ()
    sources: dict = field(default_factory=dict, hash=False)  # field -> source string
    unknown: tuple = ()  # fields looked for and not found in any usable source
    # device <-> host memory link, per device per direction (PCIe, NVLink-C2C); None: not given
    host_bytes_per_s: float | None = None

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s for `dtype`; InputError if the device has no such figure."""
        if dtype in self.peak_flops:
            return self.peak_flops[dtype]
        have = ", ".join(d for d in DTYPES if d in self.peak_flops)
        if dtype not in DTYPES:
            raise InputError(f"unknown dtype {dtype!r} for device {self.name!r}; valid dtypes for it: {have}")
        raise InputError(f"device {self.name!r} has no {dtype} peak; valid dtypes for it: {have}")


def device_names() -> list[str]:
    """Catalog names (not aliases), in file order."""
    return list(_catalog()[0])


def get_device(name: str) -> Device:
    """A catalog device by name or alias, case-insensitive."""
    devices, aliases = _catalog()
    key = str(name).strip().lower()
    key = aliases.get(key, key)
    if key not in devices:
        raise unknown_name("device", str(name), list(devices) + list(aliases))
    return devices[key]


def all_devices() -> list[Device]:
    return list(_catalog()[0].values())


@cache
def _catalog() -> tuple[dict[str, Device], dict[str, str]]:
    devices = load_devices_file(_CATALOG_FILE)
    aliases = {alias: d.name for d in devices.values() for alias in d.aliases}
    return devices, aliases


# ---------------------------------------------------------------------------------------------
# Loading and validation: every error is a one-line InputError naming the device and the field.


def load_devices_file(path) -> dict[str, Device]:
    """Parse and validate a devices YAML file (top-level key `devices:`)."""
    where = f"devices file {str(path)!r}"
    data = read_yaml(path, where)
    if not isinstance(data, dict) or not isinstance(data.get("devices"), dict):
        raise InputError(f"{where}: expected a top-level mapping 'devices:' of name -> entry")
    devices: dict[str, Device] = {}
    for raw_name, entry in data["devices"].items():
        name = str(raw_name).strip().lower()
        if name in devices:
            raise InputError(f"{where}: device {name!r} is listed twice")
        devices[name] = _parse_device(name, entry, where)
    _check_cross_references(devices, where)
    return devices


# libyaml's C parser when PyYAML has it (10x faster on the catalogs); a safe loader either way.
SafeYamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_yaml(text):
    """yaml.safe_load, with the C parser when there is one."""
    return yaml.load(text, Loader=SafeYamlLoader)


def read_yaml(path, where: str):
    """yaml.safe_load of a file; unreadable files and syntax errors become one-line InputErrors."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise InputError(f"{where}: cannot read file ({e.strerror})") from None
    try:
        return safe_yaml(text)
    except yaml.YAMLError as e:
        raise InputError(f"{where}: YAML syntax error: {yaml_error_line(e)}") from None


def yaml_error_line(e: yaml.YAMLError) -> str:
    """One line describing a YAML error: the problem and where it is."""
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def positive_number(value, what: str) -> float:
    """A positive finite float from a YAML value (numbers written as strings like '25e9' are accepted)."""
    if isinstance(value, bool):
        raise InputError(f"{what} must be a positive number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float range
        raise InputError(f"{what} must be a positive number, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise InputError(f"{what} must be a positive number, got {value!r}")
    return number


def _parse_device(name: str, entry, where: str) -> Device:
    at = f"{where}: device {name!r}"
    if not isinstance(entry, dict):
        raise InputError(f"{at}: expected a mapping of fields, got {type(entry).__name__}")
    extra = sorted(set(entry) - set(_FIELDS))
    if extra:
        raise InputError(f"{at}: unknown field {extra[0]!r}; valid fields: {', '.join(_FIELDS)}")
    for required in ("vendor", "kind", "peak_flops", "scale_up"):
        if entry.get(required) in (None, "", {}):
            raise InputError(f"{at}: field {required!r} is required")
    if entry["kind"] not in KINDS:
        raise InputError(f"{at}: kind {entry['kind']!r} is not one of {', '.join(KINDS)}")

    unknown = tuple(_string_list(entry.get("unknown"), f"{at}: unknown"))
    peak_flops = entry["peak_flops"]
    if not isinstance(peak_flops, dict):
        raise InputError(f"{at}: peak_flops must be a mapping dtype -> FLOP/s")
    for dtype in peak_flops:
        if dtype not in DTYPES:
            raise InputError(f"{at}: peak_flops has unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    peaks = {d: positive_number(peak_flops[d], f"{at}: peak_flops.{d}") for d in DTYPES if d in peak_flops}

    numbers = {}
    for key in _NUMBER_FIELDS:
        value = entry.get(key)
        if value is None:
            if key not in unknown:
                raise InputError(f"{at}: {key} is null but not listed in 'unknown' (give a number or list it)")
            numbers[key] = None
        else:
            numbers[key] = positive_number(value, f"{at}: {key}")

    profile = entry.get("kernel_profile")
    if profile is not None and profile not in KERNEL_PROFILES:
        raise InputError(f"{at}: kernel_profile {profile!r} is not one of {', '.join(KERNEL_PROFILES)} (or null)")
    stand_in = entry.get("efficiency_from")
    if (profile is None) == (stand_in is None):
        raise InputError(f"{at}: give exactly one of kernel_profile and efficiency_from")

    sources = entry.get("sources") or {}
    if not isinstance(sources, dict):
        raise InputError(f"{at}: sources must be a mapping field -> source string")
    valid_keys = set(_FIELDS) | {f"peak_flops.{d}" for d in DTYPES}
    for key in list(sources) + list(unknown):
        if key not in valid_keys:
            raise InputError(f"{at}: {key!r} in sources/unknown is not a device field (e.g. hbm_bytes, peak_flops.bf16)")

    return Device(
        name=name,
        vendor=str(entry["vendor"]),
        kind=entry["kind"],
        peak_flops=peaks,
        scale_up=str(entry["scale_up"]),
        kernel_profile=profile,
        efficiency_from=None if stand_in is None else str(stand_in).lower(),
        aliases=tuple(a.lower() for a in _string_list(entry.get("aliases"), f"{at}: aliases")),
        sources={str(k): str(v) for k, v in sources.items()},
        unknown=unknown,
        host_bytes_per_s=(None if entry.get("host_bytes_per_s") is None
                          else positive_number(entry["host_bytes_per_s"], f"{at}: host_bytes_per_s")),
        **numbers,
    )


def _string_list(value, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{what} must be a list of strings, got {value!r}")
    return value


def _check_cross_references(devices: dict[str, Device], where: str) -> None:
    """Aliases are unique; efficiency_from names a device with measured kernel tables and every dtype."""
    seen = set(devices)
    for d in devices.values():
        for alias in d.aliases:
            if alias in seen:
                raise InputError(f"{where}: device {d.name!r}: alias {alias!r} is already a device name or alias")
            seen.add(alias)
    for d in devices.values():
        if d.efficiency_from is None:
            continue
        source = devices.get(d.efficiency_from)
        if source is None:
            raise unknown_name(f"efficiency_from device (in {where}, device {d.name!r})",
                               d.efficiency_from, list(devices))
        if source.kernel_profile is None:
            raise InputError(f"{where}: device {d.name!r}: efficiency_from {d.efficiency_from!r} has no "
                             "kernel_profile; name a device with measured kernel tables")
        missing = [dtype for dtype in d.peak_flops if dtype not in source.peak_flops]
        if missing:
            raise InputError(f"{where}: device {d.name!r}: efficiency_from {d.efficiency_from!r} has no "
                             f"{', '.join(missing)} peak; name a device that has every dtype of this one")

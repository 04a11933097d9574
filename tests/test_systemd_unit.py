"""systemd/: the unit passes `systemd-analyze verify` and has what tierd relies on; the example
configs load, and the example config and the README document every setting the daemon knows; the
install steps (README's systemd section, the unit's comment) leave the config readable to the
unit's user and install what `Documentation=` names."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tierd.daemon.config import all_keys, check_config, load_config
from tierd.units import parse_size

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD_DIR / "tierd.service"
EXAMPLE = SYSTEMD_DIR / "tierd.toml"
DEV = SYSTEMD_DIR / "tierd.dev.toml"
README = SYSTEMD_DIR.parent / "README.md"
_SECONDS = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value (keys such as DeviceAllow= repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {raw!r} is outside any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: {raw!r} is not KEY=VALUE"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert match and match.group(2) in _SECONDS, f"cannot read duration {value!r}"
    return float(match.group(1)) * _SECONDS[match.group(2)]


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key, [])
    assert len(values) == 1, f"{key}= should be set once in tierd.service, found {values}"
    return values[0]


def test_unit_has_the_keys_tierd_relies_on() -> None:
    service = parse_unit(UNIT)["Service"]
    assert one(service, "Type") == "notify"
    assert one(service, "RuntimeDirectory") == "tierd"
    assert one(service, "StateDirectory") == "tierd"
    assert one(service, "LimitMEMLOCK") == "infinity"
    assert seconds(one(service, "WatchdogSec")) > 0
    exec_start = one(service, "ExecStart").split()
    assert exec_start[0].endswith("/tierd") and exec_start[1:] == ["--config", "/etc/tierd/tierd.toml"]


def test_stop_timeout_covers_grace_and_flush_of_the_example_config() -> None:
    config = load_config(EXAMPLE, env={})
    needed_s = config.server.shutdown_grace_s + config.store.flush_timeout_s
    assert seconds(one(parse_unit(UNIT)["Service"], "TimeoutStopSec")) > needed_s


def test_hardening_keeps_gpus_and_shared_memory_reachable() -> None:
    service = parse_unit(UNIT)["Service"]
    assert service.get("PrivateDevices", ["no"]) == ["no"], "PrivateDevices=yes hides /dev/nvidia*"
    assert service.get("RemoveIPC", ["no"]) == ["no"], "RemoveIPC stays off explicitly"
    allowed = [v.split()[0] for v in service.get("DeviceAllow", [])]
    assert any(a.startswith("char-nvidia") for a in allowed), "no DeviceAllow= for /dev/nvidia*"
    assert "/dev/nvidiactl" in allowed and "/dev/nvidia-uvm" in allowed
    assert one(service, "NoNewPrivileges") == "yes"
    assert one(service, "ProtectSystem") == "strict"


def test_example_config_paths_match_the_units_directories() -> None:
    config = load_config(EXAMPLE, env={})
    assert config.server.socket == Path("/run") / "tierd" / "tierd.sock"   # RuntimeDirectory=
    assert config.store.data_dir == Path("/var/lib") / "tierd"             # StateDirectory=


@pytest.mark.parametrize("path", [EXAMPLE, DEV], ids=["tierd.toml", "tierd.dev.toml"])
def test_example_configs_are_accepted(path: Path) -> None:
    assert check_config(path) == []


def test_example_config_documents_every_setting() -> None:
    text = EXAMPLE.read_text()
    written: set[str] = set()
    section = ""
    for raw in text.splitlines():
        line = raw.lstrip("# ").strip()
        header = re.fullmatch(r"\[([a-z_.-]+)\]", line)
        if header:
            section = header.group(1)
            continue
        setting = re.match(r"([a-z_]+)\s*=", line)
        if setting:
            written.add(f"{section}.{setting.group(1)}" if section else setting.group(1))
    missing = sorted(set(all_keys()) - written)
    assert not missing, f"systemd/tierd.toml does not show these settings: {missing}"
    assert "[tenants." in text


def test_dev_config_stays_in_the_repo_and_small() -> None:
    config = load_config(DEV, env={})
    assert config.server.socket is not None and not config.server.socket.is_absolute()
    assert config.server.socket.parts[0] == "var" and config.store.data_dir.parts[0] == "var"
    for tier in (config.store.hbm, config.store.dram):
        assert tier.capacity_bytes <= parse_size("1GiB")
    assert config.store.disk.capacity_bytes <= parse_size("4GiB")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart's binary exists: point it at this interpreter, keep the rest.
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable} -m tierd", UNIT.read_text(),
                  flags=re.MULTILINE)
    unit = tmp_path / "tierd.service"
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "tierd.service" in line]
    assert result.returncode == 0 and not problems, "\n".join(problems) or result.stderr


def test_readme_config_reference_lists_every_setting() -> None:
    readme = (SYSTEMD_DIR.parent / "README.md").read_text()
    rows = set(re.findall(r"^\| `([a-z_.]+)` \|", readme, flags=re.MULTILINE))
    missing = sorted(set(all_keys()) - rows)
    assert not missing, f"README.md's config reference lacks: {missing}"


def readme_install_commands() -> list[list[str]]:
    """The commands of README's systemd block (``sh norun``: root and systemd), comments dropped."""
    section = README.read_text().split("\n## systemd\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    return [words for words in (shlex.split(line, comments=True) for line in block.splitlines()) if words]


def unit_install_commands() -> list[list[str]]:
    """The install steps in the unit's leading comment (lines ``#   sudo ...``)."""
    return [shlex.split(line.lstrip("# ")) for line in UNIT.read_text().splitlines()
            if re.match(r"#\s+sudo ", line)]


def install_args(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """``sudo install [-D] [-m MODE] [-o OWNER] [-g GROUP] SRC... DEST`` -> (options, paths)."""
    assert words[:2] == ["sudo", "install"], words
    options: dict[str, str] = {}
    paths: list[str] = []
    rest = iter(words[2:])
    for word in rest:
        if word in ("-m", "-o", "-g"):
            options[word] = next(rest)
        elif word.startswith("-"):
            options[word] = ""
        else:
            paths.append(word)
    return options, paths


@pytest.mark.parametrize("steps", [readme_install_commands, unit_install_commands],
                         ids=["README.md", "tierd.service comment"])
def test_install_steps_leave_the_config_readable_to_the_units_group_only(
        steps: Callable[[], list[list[str]]]) -> None:
    service = parse_unit(UNIT)["Service"]
    user, group = one(service, "User"), one(service, "Group")
    commands = steps()
    useradd = [i for i, words in enumerate(commands) if words[:2] == ["sudo", "useradd"]]
    assert len(useradd) == 1, "one useradd creates the unit's User="
    created = commands[useradd[0]]
    assert created[-1] == user and "--system" in created
    # The group exists only if useradd makes it: --user-group names it after the user.
    assert group == user and ("--user-group" in created or "-U" in created), created
    config = one(service, "ExecStart").split()[-1]
    installs = [(i, *install_args(words)) for i, words in enumerate(commands)
                if words[:2] == ["sudo", "install"]]
    config_steps = [(i, options, paths) for i, options, paths in installs if paths[-1] == config]
    assert len(config_steps) == 1, f"no step installs {config}"
    index, options, paths = config_steps[0]
    assert paths[0] == "systemd/tierd.toml" and index > useradd[0]
    assert options.get("-g") == group and options.get("-m") == "0640"
    assert options.get("-o", "root") == "root"


def test_readme_and_unit_comment_give_the_same_install_steps() -> None:
    unit_steps = unit_install_commands()
    assert unit_steps and readme_install_commands()[:len(unit_steps)] == unit_steps


def test_documentation_names_what_the_install_steps_install() -> None:
    installed = {install_args(words)[1][-1]: install_args(words)[1][0]
                 for words in readme_install_commands() if words[:2] == ["sudo", "install"]}
    for url in parse_unit(UNIT)["Unit"]["Documentation"]:
        for link in url.split():
            if link.startswith("https://"):
                continue
            assert link.startswith("file://"), f"Documentation={link}: use https:// or file://"
            path = link.removeprefix("file://")
            assert path in installed, f"Documentation={link}, but no install step puts a file there"
            assert (SYSTEMD_DIR.parent / installed[path]).is_file()

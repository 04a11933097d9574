"""Daemon config: flags > TIERD_* environment > TOML > defaults, sizes with units, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tierd.config import EvictionPolicy, WritePolicy
from tierd.daemon.cli import build_parser, overrides_from
from tierd.daemon.config import DeviceChoice, DeviceKind, LogLevel, ServerSettings, check_config, load_config
from tierd.errors import ConfigError
from tierd.tier import Tier

GiB = 1 << 30
MiB = 1 << 20

FULL_TOML = """
device = "cuda:1"
data_dir = "/srv/tierd"
log_level = "warning"

[server]
socket = "/tmp/x/tierd.sock"
socket_mode = "0640"
tcp = "127.0.0.1:7070"
chunk_size = "2MiB"
max_inflight_rpcs = 64

[hbm]
capacity = "8GiB"
high_watermark = 0.8

[dram]
capacity = "64GiB"

[disk]
capacity = "1TiB"
fsync = false
writer_batch_size = "128MiB"

[store]
write_policy = "write_through"
lease_ttl_s = 12.5

[tenants.alice]
token_sha256 = "6c0f3e3b4b6c2a1f0e9d8c7b6a5948372615049382716a5b4c3d2e1f0a9b8c7d"
hbm = "1GiB"
dram = "2GiB"
"""


def write(tmp_path: Path, text: str, name: str = "tierd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def flags(*argv: str) -> dict[str, object]:
    return overrides_from(build_parser().parse_args(list(argv)))


def test_defaults_without_any_source() -> None:
    config = load_config(None, env={})
    assert config.server == ServerSettings()
    assert config.server.socket == Path("/run/tierd/tierd.sock") and config.server.socket_mode == 0o660
    assert config.server.tcp is None
    assert config.device == DeviceChoice(DeviceKind.AUTO) and config.log_level is LogLevel.INFO
    assert config.store.data_dir == Path("/var/lib/tierd")
    assert (config.store.hbm.capacity_bytes, config.store.dram.capacity_bytes) == (GiB, 4 * GiB)


def test_the_region_socket_sits_next_to_the_socket_unless_set(tmp_path: Path) -> None:
    default = load_config(None, env={})
    assert default.server.region_socket_path == Path("/run/tierd/tierd-regions.sock")
    assert default.serving.advertised_region_socket == "/run/tierd/tierd-regions.sock"
    moved = load_config(None, env={"TIERD_SOCKET": str(tmp_path / "d.sock")})
    assert moved.serving.advertised_region_socket == str(tmp_path / "d-regions.sock")
    chosen = load_config(write(tmp_path, f'[server]\nregion_socket = "{tmp_path}/r.sock"\n'), env={})
    assert chosen.server.region_socket_path == tmp_path / "r.sock"
    assert chosen.serving.advertised_region_socket == str(tmp_path / "r.sock")
    tcp_only = load_config(None, env={"TIERD_SOCKET": "", "TIERD_TCP": "127.0.0.1:7070"})
    assert tcp_only.server.region_socket_path is None
    assert tcp_only.serving.advertised_region_socket == ""


def test_the_page_socket_sits_next_to_the_socket_unless_set(tmp_path: Path) -> None:
    default = load_config(None, env={})
    assert default.server.page_socket_path == Path("/run/tierd/tierd-pages.sock")
    assert default.serving.advertised_page_socket == "/run/tierd/tierd-pages.sock"
    assert default.server.page_connections == 256
    moved = load_config(None, env={"TIERD_SOCKET": str(tmp_path / "d.sock")})
    assert moved.serving.advertised_page_socket == str(tmp_path / "d-pages.sock")
    chosen = load_config(write(tmp_path, f'[server]\npage_socket = "{tmp_path}/p.sock"\n'
                                         'page_connections = 8\n'), env={})
    assert chosen.server.page_socket_path == tmp_path / "p.sock"
    assert chosen.serving.advertised_page_socket == str(tmp_path / "p.sock")
    assert chosen.server.page_connections == 8
    tcp_only = load_config(None, env={"TIERD_SOCKET": "", "TIERD_TCP": "127.0.0.1:7070"})
    assert tcp_only.server.page_socket_path is None and tcp_only.serving.advertised_page_socket == ""


@pytest.mark.parametrize("toml, words", [
    ('[server]\npage_connections = 0\n', "server.page_connections must be positive"),
    ('[server]\nsocket = "/tmp/x.sock"\npage_socket = "/tmp/x.sock"\n', "three different paths"),
    ('[server]\nregion_socket = "/tmp/y.sock"\npage_socket = "/tmp/y.sock"\n', "three different paths"),
])
def test_page_socket_settings_that_cannot_work_are_refused(tmp_path: Path, toml: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_config(write(tmp_path, toml), env={})


def test_every_section_of_the_toml_is_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL_TOML), env={})
    assert config.device == DeviceChoice(DeviceKind.CUDA, 1) and config.log_level is LogLevel.WARNING
    server = config.server
    assert (server.socket, server.socket_mode, server.tcp) == (Path("/tmp/x/tierd.sock"), 0o640,
                                                                "127.0.0.1:7070")
    assert config.serving.chunk_bytes == 2 * MiB and config.serving.max_inflight_rpcs == 64
    store = config.store
    assert store.data_dir == Path("/srv/tierd")
    assert store.hbm.capacity_bytes == 8 * GiB and store.hbm.high_watermark == 0.8
    assert store.dram.capacity_bytes == 64 * GiB and store.disk.capacity_bytes == 1 << 40
    assert store.disk.fsync is False and store.disk.writer_batch_bytes == 128 * MiB
    assert store.write_policy is WritePolicy.WRITE_THROUGH and store.lease_ttl_s == 12.5
    assert store.tenant_quotas == {"alice": {Tier.HBM: GiB, Tier.DRAM: 2 * GiB}}
    assert config.config_path == tmp_path / "tierd.toml"


@given(file_gib=st.none() | st.integers(1, 50), env_gib=st.none() | st.integers(1, 50),
       alias_gib=st.none() | st.integers(1, 50), flag_gib=st.none() | st.integers(1, 50))
def test_precedence_is_flags_then_env_then_file_then_default(
        tmp_path_factory: pytest.TempPathFactory, file_gib: int | None, env_gib: int | None,
        alias_gib: int | None, flag_gib: int | None) -> None:
    path = None
    if file_gib is not None:
        path = write(tmp_path_factory.mktemp("cfg"), f'[dram]\ncapacity = "{file_gib}GiB"\n')
    env = {"TIERD_DRAM__CAPACITY": f"{env_gib}GiB"} if env_gib is not None else {}
    if alias_gib is not None:
        env["TIERD_DRAM"] = f"{alias_gib}GiB"  # the short alias beats the long form
    overrides = flags("--dram", f"{flag_gib}GiB") if flag_gib is not None else {}
    expected = next((v for v in (flag_gib, alias_gib, env_gib, file_gib) if v is not None), 4)
    config = load_config(path, env=env, overrides=overrides)
    assert config.store.dram.capacity_bytes == expected * GiB


def test_every_flag_lands_in_its_setting(tmp_path: Path) -> None:
    config = load_config(None, env={}, overrides=flags(
        "--socket", str(tmp_path / "s.sock"), "--data-dir", str(tmp_path / "d"), "--device", "cpu",
        "--hbm", "512MiB", "--dram", "2GiB", "--disk", "10GB", "--tcp", "[::1]:7070",
        "--log-level", "debug", "--write-policy", "write_through", "--eviction-policy", "prefix_aware"))
    assert config.server.socket == tmp_path / "s.sock" and config.server.tcp == "[::1]:7070"
    assert config.store.data_dir == tmp_path / "d" and config.device.kind is DeviceKind.CPU
    assert config.store.hbm.capacity_bytes == 512 * MiB
    assert config.store.disk.capacity_bytes == 10 * 1000**3
    assert config.log_level is LogLevel.DEBUG
    assert config.store.write_policy is WritePolicy.WRITE_THROUGH
    assert config.store.eviction_policy is EvictionPolicy.PREFIX_AWARE


def test_the_eviction_policy_comes_from_toml_or_environment(tmp_path: Path) -> None:
    path = tmp_path / "tierd.toml"
    path.write_text('[store]\neviction_policy = "prefix_aware"\n')
    assert load_config(path, env={}).store.eviction_policy is EvictionPolicy.PREFIX_AWARE
    env = {"TIERD_EVICTION_POLICY": "lru"}
    assert load_config(path, env=env).store.eviction_policy is EvictionPolicy.LRU
    with pytest.raises(ConfigError, match="lru, prefix_aware"):
        load_config(None, env={"TIERD_STORE__EVICTION_POLICY": "mru"})


def test_tierd_config_env_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[hbm]\ncapacity = "3GiB"\n')
    assert load_config(None, env={"TIERD_CONFIG": str(path)}).store.hbm.capacity_bytes == 3 * GiB


def test_bad_sizes_name_their_source_and_the_accepted_forms(tmp_path: Path) -> None:
    path = write(tmp_path, '[dram]\ncapacity = "12 parsecs"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert str(path) in message and "dram.capacity" in message and "GiB" in message
    with pytest.raises(ConfigError, match=r"\$TIERD_HBM: hbm.capacity: cannot read size 'lots'"):
        load_config(None, env={"TIERD_HBM": "lots"})
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--disk", "-5GiB"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(("text", "fragment"), [
    ('[dram]\ncapacty = "1GiB"\n', "unknown setting 'dram.capacty'"),
    ('device = "tpu"\n', "expected auto, cpu, cuda or cuda:N"),
    ('[server]\nsocket_mode = "999"\n', "octal file mode"),
    ('[disk]\nfsync = "maybe"\n', "expected true or false"),
    ('[store]\nwrite_policy = "sometimes"\n', "write_back, write_through"),
    ('[server]\ntcp = "10.0.0.5:7070"\n', "not a loopback address"),
    ('[server]\ntcp = "localhost"\n', "HOST:PORT"),
    ('[server]\nmetrics = "9464"\n', "server.metrics must be HOST:PORT"),
    ('[server]\nmetrics = "127.0.0.1:99999"\n', "server.metrics must be HOST:PORT"),
    ('[server]\ntls_cert = "/etc/cert.pem"\n', "tls_key go together"),
    ('[server]\nchunk_size = "64MiB"\nmax_message_size = "64MiB"\n', "exceeds server.max_message_size"),
    ('[server]\nsocket = ""\n', "nothing to listen on"),
    ('[dram]\ncapacity = 0\n', "dram capacity must be above 0"),
    ('[hbm]\nlow_watermark = 0.95\n', "watermarks"),
    ('[store]\nmax_page_size = "2GiB"\n', "store.max_page_size (2147483648 bytes) exceeds"),
    ('[store]\nmax_namespaces_per_tenant = 0\n', "max_namespaces_per_tenant must be positive"),
    ('[store]\nmax_namespaces = -1\n', "max_namespaces must be positive"),
    ('[tenants.bob]\ntoken_sha256 = "%s"\ngpu = "1GiB"\n' % ("ab" * 32),
     "tenants.bob.gpu: unknown key"),
    ('this is = not toml =', "not valid TOML"),
    ('[remote]\nnodes = ["10.0.0.5"]\n', "remote.nodes: '10.0.0.5' is not HOST:PORT"),
    ('[remote]\nnodes = "a:1"\nwrite_on = "demote"\n[disk]\ncapacity = 0\n', "use write_on = \"commit\""),
    ('[remote]\ntls_ca_file = "/ca.pem"\n', "need remote.tls = true"),
    ('[remote]\ntls = true\ntls_cert_file = "/c.pem"\n', "tls_key_file go together"),
    ('[remote]\ntimeout_s = 0\n', "remote.timeout_s must be positive"),
    ('[remote]\nwrite_on = "sometimes"\n', "commit, demote"),
    ('[remote]\nnodes = [1, 2]\n', "expected a list of strings"),
])
def test_invalid_configs_are_refused_with_a_reason(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=None) as info:
        load_config(path, env={})
    assert fragment in str(info.value)
    problems = check_config(path)
    assert len(problems) == 1 and fragment in problems[0]


def test_tcp_with_tls_may_be_remote(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\ntcp = "0.0.0.0:7070"\ntls_cert = "/c.pem"\ntls_key = "/k.pem"\n')
    assert load_config(path, env={}).server.tls_cert == Path("/c.pem")


def test_check_config_lists_every_problem_and_passes_good_files(tmp_path: Path) -> None:
    assert check_config(write(tmp_path, FULL_TOML, "good.toml")) == []
    bad = write(tmp_path, '[hbm]\ncapacity = "x"\n[disk]\nfsync = "y"\n[nope]\na = 1\n', "bad.toml")
    problems = check_config(bad)
    assert len(problems) == 3
    assert any("hbm.capacity" in p for p in problems) and any("disk.fsync" in p for p in problems)
    assert any("nope.a" in p for p in problems)
    missing = check_config(tmp_path / "absent.toml")
    assert len(missing) == 1 and "cannot read config file" in missing[0]


def test_unknown_environment_variables_are_ignored() -> None:
    config = load_config(None, env={"TIERD_TOKEN": "secret", "TIERD_NOT__A_KEY": "1"})
    assert config == load_config(None, env={})


def test_remote_nodes_come_from_a_toml_array_or_a_comma_separated_string(tmp_path: Path) -> None:
    path = write(tmp_path, '[remote]\nnodes = ["10.0.0.5:6379", "10.0.0.6:6379"]\nusername = "tierd"\n')
    remote = load_config(path, env={}).store.remote
    assert remote.nodes == ("10.0.0.5:6379", "10.0.0.6:6379") and remote.username == "tierd"
    assert remote.enabled
    from_env = load_config(path, env={"TIERD_REMOTE__NODES": "a:1, b:2,"}).store.remote
    assert from_env.nodes == ("a:1", "b:2")
    assert not load_config(None, env={}).store.remote.enabled

"""`androcond devices doctor` decides from the probe's output alone: what a stock GKI phone lacks, and a device
that has everything (the probe itself runs over adb on the arm64 device: tests/agent/test_arm64_doctor.py)."""

from __future__ import annotations

from androcond.provision.doctor import State, assess

READY_CONFIG = "\n".join(f"CONFIG_{o}=y" for o in (
    "CHECKPOINT_RESTORE", "NAMESPACES", "PID_NS", "NET_NS", "IPC_NS", "UTS_NS", "CGROUPS", "MEMCG", "OVERLAY_FS",
    "USERFAULTFD", "BINFMT_MISC"))


def probe(*, uid: str = "0", config: str = READY_CONFIG, stack: str = "fffffffdd000-ffffffffe000",
          runc_conf: str = "tcp-close", docker: str = "26.1.5+dfsg1 1.45", python: str = "3.13.5 43.0.0",
          qemu: str = "/usr/bin/qemu-x86_64-static", experimental: str = "true",
          agent: str = "python3 /data/androcond/androcond-agent.pyz agent serve --config /data/androcond/agent.toml",
          end: bool = True) -> str:
    return f"""@@id
{uid}
@@uname
aarch64
6.1.75-android14-11
@@config
source=/proc/config.gz
{config}
@@maps
00400000-00401000 r-xp 00000000 00:00 0 /bin/cat
{stack} rw-p 00000000 00:00 0 [stack]
@@docker
{docker}
@@experimental
{experimental}
@@runtimes
{{"androcond":{{"path":"/data/androcond/androcond-runc"}},"runc":{{"path":"runc"}}}}
@@dockerroot
/data/docker
@@criu
Version: 4.1.1
@@criucheck
Looks good.
@@runcconf
# the device's
{runc_conf}
@@df
/dev/block/dm-5 104857600 4194304 100663296 4% /data
@@python
{python}
@@qemu
{qemu}
@@agent
{agent}
""" + ("@@end\n" if end else "")


def states(output: str) -> dict[str, State]:
    return {r.name: r.state for r in assess(output, ["tcp-close"])}


def test_a_device_with_everything_is_ready() -> None:
    found = assess(probe(), ["tcp-close"])
    assert {r.name: r.state for r in found if r.state != State.OK} == {}
    assert next(r for r in found if r.name == "address bits").detail == "48-bit user addresses"
    assert all(r.fix == "" for r in found)


def test_a_stock_gki_kernel_with_39_bit_addresses() -> None:
    gki = READY_CONFIG.replace("CONFIG_PID_NS=y", "# CONFIG_PID_NS is not set").replace(
        "CONFIG_CHECKPOINT_RESTORE=y\n", "")
    found = {r.name: r for r in assess(probe(config=gki, stack="7fffedd000-7ffffff000"), ["tcp-close"])}
    missing = {name for name, r in found.items() if r.state == State.MISSING}
    assert missing == {"kernel PID_NS", "kernel CHECKPOINT_RESTORE", "address bits"}
    assert found["kernel PID_NS"].detail == "CONFIG_PID_NS=n (/proc/config.gz)"
    assert "GKI" in found["kernel PID_NS"].blocks and found["kernel PID_NS"].fix == "CONFIG_PID_NS=y"
    assert found["address bits"].detail == "39-bit user addresses"
    assert "CONFIG_ARM64_VA_BITS_48" in found["address bits"].fix


def test_no_root_no_runc_conf_no_python_cryptography() -> None:
    output = probe(uid="2000", runc_conf="", python="ModuleNotFoundError: No module named 'cryptography'", qemu="")
    found = {r.name: r for r in assess(output, ["tcp-close"])}
    assert found["root"].state == State.MISSING and "adb root" in found["root"].fix
    assert found["/etc/criu/runc.conf"].state == State.MISSING
    assert found["/etc/criu/runc.conf"].fix == "add tcp-close to /etc/criu/runc.conf"
    assert found["python3 with cryptography"].state == State.MISSING
    assert "python3-cryptography" in found["python3 with cryptography"].fix
    assert found["qemu-x86_64"].state == State.MISSING and "emulated" in found["qemu-x86_64"].blocks


def test_without_a_readable_kernel_config_the_options_are_unknown_not_missing() -> None:
    found = states(probe(config=""))
    assert {found[f"kernel {o}"] for o in ("PID_NS", "USERFAULTFD")} == {State.UNKNOWN}
    assert found["root"] == State.OK


def test_a_probe_cut_short_says_so() -> None:
    assert [(r.name, r.state) for r in assess(probe(end=False), [])] == [("probe", State.UNKNOWN)]


def test_a_device_before_setup_lacks_the_agent_and_the_experimental_api() -> None:
    found = {r.name: r for r in assess(probe(experimental="false", agent=""), ["tcp-close"])}
    assert {n for n, r in found.items() if r.state != State.OK} == {"engine experimental", "agent"}
    assert "devices setup" in found["agent"].fix and found["agent"].detail == "not running"
    assert '"experimental": true' in found["engine experimental"].fix

"""What the agent does to the device's Docker engine: prepare the target container, place files, restore.

The target container is created from the same image as the source while the images are still streaming, so
that at commit only `docker start --checkpoint` is left. Its checkpoint directory and writable layer are
where the files land (see DESIGN.md, "Restore on a device with Docker").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..aio import complete
from ..build import build_version
from ..criu import compat as criu_compat
from ..criu.leftovers import place_nonce, remove_extractions
from ..engine import Engine, EngineError
from ..logging import get_logger
from ..protocol.emulation import restorer_mounted, stub_supported
from . import emulated, readout, restore_steps
from .emulator import find_emulator
from .errors import RestoreError
from .guest_signals import host_mask

log = get_logger(__name__)


@dataclass(frozen=True)
class DeviceFacts:
    isa: str
    page_size: int
    criu_version: str
    engine_version: str
    data_root: Path
    vdso: bytes = b""  # what a cross-ISA recode lays out for this kernel (no vdso proxy needed on restore)
    vvar_size: int = 0
    kernel_release: str = ""
    runtime: str = ""  # RUNTIME_NAME when the engine has androcond's runc wrapper (fast restore), else ""
    va_bits: int = 0  # user address bits this kernel gives a process (0: unknown)
    criu_runc_options: tuple[str, ...] = ()  # what /etc/criu/runc.conf hands CRIU here
    cgroup2: bool = False  # /sys/fs/cgroup is the unified hierarchy
    absent_masked_paths: tuple[str, ...] = ()  # Docker's masked paths this kernel lacks
    lazy_restore: bool = False  # its CRIU can restore lazily here (userfaultfd with non-cooperative events)
    emulator: str = ""  # its static qemu-x86_64 ("": it cannot run x86_64 containers emulated)
    emulator_version: str = ""  # that qemu's version ("10.0.2")
    binfmt_x86_64: bool = False  # binfmt_misc runs x86_64 programs through a static qemu (`docker exec` works)
    agent_version: str = __version__  # this agent's build (androcond.build): gather_facts reads it

    @property
    def emulator_stub(self) -> bool:
        """Its emulator runs the gdb stub without waiting (protocol/emulation.py): mounted in each emulated
        container, so that the process can be read out later."""
        return bool(self.emulator) and stub_supported(self.emulator_version)

    @property
    def criu_dumps_sockets(self) -> bool:
        return criu_compat.dumps_inet_sockets(self.criu_version, self.kernel_release)



def read_vdso(maps: Path = Path("/proc/self/maps"), mem: Path = Path("/proc/self/mem")) -> tuple[bytes, int]:
    """This process's [vdso] bytes and the size of its [vvar*] areas: the kernel's own, as a restored
    process on this device will get them."""
    vdso: tuple[int, int] | None = None
    vvar = 0
    for line in maps.read_text().splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if fields[5] == "[vdso]":
            vdso = (start, end)
        elif fields[5].startswith("[vvar"):
            vvar += end - start
    if vdso is None:
        return b"", 0
    with mem.open("rb") as f:
        f.seek(vdso[0])
        return f.read(vdso[1] - vdso[0]), vvar


async def gather_facts(engine: Engine) -> DeviceFacts:
    # `criu check` takes ~50 ms, once per agent start (per connection under `agent stdio`): meanwhile the engine
    # is asked. Not a TaskGroup: an engine that does not answer must fail with its own error, not a group.
    lazy = asyncio.create_task(criu_compat.lazy_restore_supported())
    try:
        info = await engine.info()
        version = await engine.version()
        lazy_restore = await lazy
    except BaseException:
        lazy.cancel()
        await asyncio.gather(lazy, return_exceptions=True)
        raise
    vdso, vvar_size = await asyncio.to_thread(read_vdso)
    emulator = await find_emulator(platform.machine())
    return DeviceFacts(isa=platform.machine(), page_size=os.sysconf("SC_PAGE_SIZE"),
                       criu_version=await criu_compat.local_criu_version(),
                       engine_version=str(version.get("Version", "")),
                       data_root=Path(str(info["DockerRootDir"])), vdso=vdso, vvar_size=vvar_size,
                       kernel_release=criu_compat.kernel_release(),
                       runtime=RUNTIME_NAME if RUNTIME_NAME in (info.get("Runtimes") or {}) else "",
                       va_bits=await asyncio.to_thread(criu_compat.own_va_bits),
                       criu_runc_options=tuple(await asyncio.to_thread(criu_compat.runc_options)),
                       cgroup2=await asyncio.to_thread(criu_compat.cgroup_v2),
                       absent_masked_paths=tuple(await asyncio.to_thread(criu_compat.absent_paths)),
                       lazy_restore=lazy_restore, emulator=emulator.path, emulator_version=emulator.version,
                       binfmt_x86_64=emulator.binfmt, agent_version=await asyncio.to_thread(build_version))


@dataclass
class TargetContainer:
    container_id: str
    checkpoint_dir: Path  # where the CRIU images land
    upper_dir: Path
    # The checkpoint directory the engine sees. With androcond's runtime only a stub (descriptors.json, the
    # images' path, a nonce); on the plain path the same directory as checkpoint_dir.
    stub_dir: Path | None = None
    nonce: str = ""


class DeviceEngine:
    def __init__(self, engine: Engine, facts: DeviceFacts, spool_dir: Path | None = None) -> None:
        self.engine = engine
        self.facts = facts
        self.spool_dir = spool_dir  # images land under it when the engine has androcond's runtime
        self.exec_root: Path | None = None  # the engine's --exec-root (runc's states), when the agent knows it

    async def has_image(self, ref: str) -> bool:
        return await self.engine.image_exists(ref)

    async def load_image(self, chunks: AsyncIterator[bytes]) -> None:
        try:
            await self.engine.load_image(chunks)
        except EngineError as exc:
            raise RestoreError(f"loading the image failed: {exc}") from exc

    def _failed_logs(self) -> Path | None:
        return self.spool_dir / "failed-restores" if self.spool_dir is not None else None

    @property
    def fast_restore(self) -> bool:
        return bool(self.facts.runtime) and self.spool_dir is not None

    def _started_once(self, native_plan: bool) -> bool:
        """Home from emulation with androcond's runtime: it starts the container once with the restorer."""
        return native_plan and self.fast_restore

    @property
    def post_copy(self) -> bool:
        """Lazy restores need androcond's runtime (the engine cannot pass --lazy-pages) and userfaultfd."""
        return self.fast_restore and self.facts.lazy_restore

    async def create(self, name: str, config: dict[str, Any], checkpoint_name: str,
                     migration_id: str = "", *, lazy: bool = False, emulate: bool = False,
                     native_plan: bool = False) -> TargetContainer:
        """The target container, made while the source still runs. `emulate`: the restorer runs under this
        device's qemu-x86_64; `native_plan` (the way home from emulation, on x86_64): it runs natively. Either
        way no CRIU runs: the restorer reads its plan from a directory mounted into the container."""
        if lazy and not self.post_copy:
            raise RestoreError("this device cannot restore lazily (it needs androcond's runtime and "
                               "userfaultfd): migrate without post-copy")
        emulated_dir: Path | None = None
        criu_conf: Path | None = None
        if emulate and not self.facts.emulator:
            raise RestoreError("this device cannot run x86_64 containers emulated (no static qemu-x86_64)")
        if native_plan and self.facts.isa != "x86_64":
            raise RestoreError(f"androcond's restorer runs natively on x86_64 only, not on {self.facts.isa}")
        if emulate or native_plan:
            if self.spool_dir is None:
                raise RestoreError("this agent has no spool directory for the restorer's files")
            emulated_dir = self.spool_dir / "emulated" / (migration_id or name)
            await asyncio.to_thread(emulated_dir.mkdir, parents=True, exist_ok=True)
            if emulate:
                await asyncio.to_thread(emulated.place_emulator, Path(self.facts.emulator), emulated_dir)
            if self._started_once(native_plan):
                # Home as it was: the runtime mounts the restorer's directory and runs the restorer this once
                # (start_emulated leaves it the mark); the engine's configuration is the container's own.
                host = config.get("HostConfig") or {}
                config = {**config, "HostConfig": {**host, "Runtime": self.facts.runtime}}
            else:
                config = await asyncio.to_thread(emulated.mounted, config, emulated_dir,
                                                 stub=emulate and self.facts.emulator_stub)
        elif self.fast_restore:
            assert self.spool_dir is not None
            criu_conf = await asyncio.to_thread(write_restore_config, self.spool_dir)
            host = config.get("HostConfig") or {}
            annotations = {**(host.get("Annotations") or {}), CRIU_CONFIG_ANNOTATION: str(criu_conf)}
            config = {**config, "HostConfig": {**host, "Runtime": self.facts.runtime, "Annotations": annotations}}
        try:
            cid = await self.engine.create_container(config, name=name or None)
        except EngineError as exc:
            raise RestoreError(f"creating the target container failed: {exc}") from exc
        except asyncio.CancelledError:
            if name:  # the engine may have made it before we stopped listening: the name is ours
                await self._remove_quietly(name)
            raise
        # From here on the container is ours: whatever fails (or cancels us), it must not stay behind.
        try:
            await self._volumes_free(config, cid)
            if emulated_dir is not None:
                return TargetContainer(cid, emulated_dir, await self._upper_dir(cid))
            return await self._prepare(cid, checkpoint_name, migration_id, lazy, criu_conf)
        except BaseException as exc:
            await self._remove_quietly(cid)
            if isinstance(exc, EngineError):
                raise RestoreError(f"inspecting the target container failed: {exc}") from exc
            if isinstance(exc, OSError):
                raise RestoreError(f"making the checkpoint directory of the target container failed: {exc}") \
                    from exc
            raise

    async def _upper_dir(self, cid: str) -> Path:
        inspect = await self.engine.inspect_container(cid)
        driver = inspect.get("GraphDriver") or {}
        upper = (driver.get("Data") or {}).get("UpperDir")
        if driver.get("Name") != "overlay2" or not upper:
            raise RestoreError(f"the device engine uses the {driver.get('Name')!r} storage driver; "
                               "androcond needs overlay2 to place the writable layer")
        return Path(upper)

    async def _prepare(self, cid: str, checkpoint_name: str, migration_id: str, lazy: bool,
                       criu_conf: Path | None) -> TargetContainer:
        upper = await self._upper_dir(cid)
        stub_dir = self.facts.data_root / "containers" / cid / "checkpoints" / checkpoint_name
        images_dir = stub_dir
        if self.fast_restore:
            images_dir = self._spooled_images(migration_id or cid)
        nonce = await asyncio.to_thread(_make_checkpoint_dirs, stub_dir, images_dir, migration_id, lazy, criu_conf)
        return TargetContainer(cid, images_dir, upper, stub_dir, nonce)

    async def _remove_quietly(self, cid: str) -> None:
        """Remove a container we just made, even while being cancelled."""
        try:
            await complete(self.discard(cid))
        except EngineError as exc:
            log.error("could not remove the target container", container_id=cid, error=str(exc))

    async def _volumes_free(self, config: dict[str, Any], cid: str) -> None:
        """A move brings the container's named volumes as its source left them, replacing what this engine
        holds under those names: refused (before anything is frozen) when another container uses one here."""
        for mount in (config.get("HostConfig") or {}).get("Mounts") or []:
            if mount.get("Type") != "volume" or not mount.get("Source"):
                continue
            name = str(mount["Source"])
            users = [str(c.get("Names", ["?"])[0]).lstrip("/")
                     for c in await self.engine.list_containers(all_states=True, volume=name) if c.get("Id") != cid]
            if users:
                raise RestoreError(f"volume {name!r} is used here by {', '.join(users)}: the move would replace "
                                   "its data")

    async def take_volume(self, name: str) -> Path:
        """The volume's directory, emptied for the files that come (what this engine held under the name is an
        older copy: a file deleted at the source must not come back)."""
        path = await self.volume_dir(name)
        removed = await asyncio.to_thread(_empty, path)
        if removed:
            log.info("the volume's older copy here was replaced", volume=name, entries=removed)
        return path

    async def volume_dir(self, name: str) -> Path:
        try:
            volume = await self.engine.inspect_volume(name)
        except EngineError as exc:
            raise RestoreError(f"volume {name!r} is not on the device: {exc}") from exc
        return Path(str(volume["Mountpoint"]))

    async def restore(self, target: TargetContainer, checkpoint_name: str, *, clean: bool = True) -> dict[str, float]:
        """Start the container from its checkpoint; where its time went (restore_steps.py). With `clean`, what
        the restore leaves is removed at once (a lazy restore keeps it until its pages have arrived: lazy-pages
        works in the images directory)."""
        called = time.time()
        try:
            state, answered = await self._start_from_checkpoint(target, checkpoint_name)
        except BaseException:
            await self.clean_after_restore(target)
            raise
        steps = await asyncio.to_thread(restore_steps.read, target.checkpoint_dir, called, answered)
        if clean:
            await self.clean_after_restore(target)
        if not state.get("Running"):
            raise RestoreError(f"restored container is not running (status {state.get('Status')}, "
                               f"exit code {state.get('ExitCode')}, error {state.get('Error')!r})")
        return steps

    async def start_emulated(self, target: TargetContainer, *, native: bool = False) -> float:
        """Start an emulated container (its restorer rebuilds the process; `native`: without an emulator, the
        way home); the seconds until it did. Its files are removed either way: the restorer has read them (or
        will never)."""
        try:
            if not self._started_once(native):
                return await emulated.start(self.engine, target.container_id, target.checkpoint_dir,
                                            native=native)
            try:
                await asyncio.to_thread(emulated.place_restorer, target.checkpoint_dir, target.upper_dir)
            except OSError as exc:
                raise RestoreError(f"cannot place the restorer in the container's layer: {exc}") from exc
            seconds = await emulated.start(self.engine, target.container_id, target.checkpoint_dir, native=native,
                                           once=emulated.RUNTIME_MARKS / target.container_id)
            left = await emulated.let_go(self.engine, target.container_id)
            if left:
                log.warning("the restored container runs, but cannot be checkpointed until it is restarted",
                            container_id=target.container_id, why=left)
            return seconds
        finally:
            await self.clean_after_restore(target)

    async def _start_from_checkpoint(self, target: TargetContainer,
                                     checkpoint_name: str) -> tuple[dict[str, Any], float]:
        """The container's state, and when the engine answered the start (time.time())."""
        try:
            if target.stub_dir is not None and target.stub_dir != target.checkpoint_dir:
                # runc reads descriptors.json from the path the engine gives it: the stub's copy.
                await asyncio.to_thread(shutil.copyfile, target.checkpoint_dir / "descriptors.json",
                                        target.stub_dir / "descriptors.json")
            await self.engine.start_container(target.container_id, checkpoint=checkpoint_name)
            answered = time.time()
            state: dict[str, Any] = (await self.engine.inspect_container(target.container_id))["State"]
        except (EngineError, OSError) as exc:
            why = await asyncio.to_thread(criu_log_errors, str(exc), self._failed_logs())
            raise RestoreError(f"restore refused by the device engine: {exc}{why}") from exc
        return state, answered

    async def clean_after_restore(self, target: TargetContainer) -> None:
        """What a restore leaves on the device: containerd's extraction of the checkpoint (it never removes
        it), the images (spooled or in the checkpoint directory) and the stub. The images are no longer
        needed once CRIU has read them, whatever it answered."""
        removed = await asyncio.to_thread(_remove_leftovers, target)
        if removed:
            log.info("removed what the restore left", container_id=target.container_id,
                     paths=[str(p) for p in removed])

    def _spooled_images(self, migration_id: str) -> Path:
        assert self.spool_dir is not None
        return self.spool_dir / "images" / migration_id

    async def remove_spooled(self, migration_id: str, container_id: str = "") -> bool:
        """The images a migration spooled here, or the restorer's directory (settling it after the agent died:
        no TargetContainer is left to say where they are), and a runtime's mark the container's start did not
        take. True if there were some."""
        if container_id:
            await asyncio.to_thread((emulated.RUNTIME_MARKS / container_id).unlink, missing_ok=True)
        if self.spool_dir is None:
            return False
        spooled = [d for d in (self._spooled_images(migration_id), self.spool_dir / "emulated" / migration_id)
                   if d.exists()]
        for directory in spooled:
            await asyncio.to_thread(shutil.rmtree, directory, True)
        return bool(spooled)

    async def apply_restart_policy(self, container_id: str, policy: dict[str, Any]) -> None:
        """After a successful restore; a failure leaves the container running without it, and says so."""
        try:
            await self.engine.update_container(container_id, {"RestartPolicy": policy})
        except EngineError as exc:
            log.error("the restored container runs, but its restart policy could not be applied",
                      container_id=container_id, policy=policy, error=str(exc))

    async def is_running(self, container_id: str) -> bool:
        """Whether the container runs; False if it does not exist."""
        try:
            state = (await self.engine.inspect_container(container_id))["State"]
        except EngineError as exc:
            if exc.status == 404:
                return False
            raise
        return bool(state.get("Running"))

    async def release_restorer(self, container_id: str) -> str:
        """A running container that androcond's runtime started once with the restorer, whose agent stopped
        before letting it go (settled as running): its restorer's directory is unmounted and its copy removed
        now, or it could never be checkpointed. An emulated container keeps its directory (its emulator runs
        from there: the engine binds it, the runtime does not). What could not be done, '' when all was or
        nothing was to do.

        The restorer is never cut short by this: it blocks every signal until the process it rebuilt runs with
        its own mask, so a container whose process still blocks them all is left as it is (and said so)."""
        try:
            inspect = await self.engine.inspect_container(container_id)
        except EngineError as exc:
            return f"cannot inspect it: {exc}"
        pid = int((inspect.get("State") or {}).get("Pid") or 0)
        if not pid or readout.emulated(inspect):
            return ""
        if not await asyncio.to_thread(restorer_mounted, pid):
            return ""
        blocked = await asyncio.to_thread(host_mask, pid, pid)
        if blocked is None or blocked | UNBLOCKABLE == ALL_SIGNALS:
            return "its process blocks every signal, as the restorer does while it runs: it may not be done yet"
        left = await emulated.let_go(self.engine, container_id)
        log.info("let go of the restorer of a container settled as running", container_id=container_id,
                 left=left or None)
        return left

    async def discard(self, container_id: str) -> None:
        try:
            await self.engine.remove_container(container_id, force=True)
        except EngineError as exc:
            if exc.status != 404:
                raise


ALL_SIGNALS = (1 << 64) - 1
UNBLOCKABLE = 1 << 8 | 1 << 18  # SIGKILL's and SIGSTOP's bits: the kernel never shows them blocked
RUNTIME_NAME = "androcond"
RUNTIME_STUB = "androcond-images"  # in the stub: the directory where the images are (read by androcond-runc)
RUNTIME_LAZY = "androcond-lazy"  # in the stub: androcond-runc restores with --lazy-pages
RUNTIME_CRIU_CONFIG = "androcond-criu-config"  # in the stub: the CRIU configuration androcond-runc hands runc


# runc hands CRIU the configuration file this annotation names instead of /etc/criu/runc.conf (engines with
# API >= 1.43 pass HostConfig.Annotations on; older ones ignore the field).
CRIU_CONFIG_ANNOTATION = "org.criu.config"
RESTORE_CONFIG = "criu-restore.conf"
# The source's cgroups are not this device's (cgroup v1 controllers on a v2 host, other paths): CRIU is told to
# leave cgroups alone, and the restored tasks stay in the cgroup runc made for the container, with its limits.
RESTORE_OPTIONS = ("manage-cgroups=ignore",)  # an optional argument: "=" or CRIU reads no mode


def write_restore_config(spool_dir: Path, runc_conf: Path = criu_compat.RUNC_CONF) -> Path:
    """The CRIU configuration for androcond's restores: this device's runc.conf (it replaces it), plus
    RESTORE_OPTIONS. Written in place each time (atomically), so an edited runc.conf is seen."""
    try:
        own = runc_conf.read_text()
    except OSError:
        own = ""
    text = f"# written by androcond's agent: {runc_conf}, then its own\n{own.rstrip()}\n" + \
        "".join(f"{option}\n" for option in RESTORE_OPTIONS)
    path = spool_dir / RESTORE_CONFIG
    # A temporary name of its own: migrations create their containers concurrently.
    fd, tmp = tempfile.mkstemp(dir=spool_dir, prefix=f".{RESTORE_CONFIG}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _empty(directory: Path) -> int:
    """Remove everything beneath `directory` (not following links); how many top entries went."""
    count = 0
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        count += 1
    return count


def runtime_path() -> Path:
    """The runc wrapper shipped with the agent, to register as the device engine's `androcond` runtime."""
    return Path(__file__).parent / "runtime" / "androcond-runc"


def _make_checkpoint_dirs(stub_dir: Path, images_dir: Path, migration_id: str, lazy: bool = False,
                          criu_conf: Path | None = None) -> str:
    stub_dir.mkdir(parents=True, exist_ok=False)
    nonce = place_nonce(stub_dir, owner=migration_id)
    if images_dir != stub_dir:
        images_dir.mkdir(parents=True, exist_ok=True)
        (stub_dir / RUNTIME_STUB).write_text(str(images_dir))
        if lazy:
            (stub_dir / RUNTIME_LAZY).write_text("")
        if criu_conf is not None:  # for engines that drop the annotation (androcond-runc sets it)
            (stub_dir / RUNTIME_CRIU_CONFIG).write_text(str(criu_conf))
    return nonce


def _remove_leftovers(target: TargetContainer) -> list[Path]:
    removed = remove_extractions(target.nonce) if target.nonce else []
    for directory in {target.checkpoint_dir, *([target.stub_dir] if target.stub_dir else [])}:
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


def parse_create_config(text: str) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RestoreError(f"the create config is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise RestoreError("the create config is not a JSON object")
    return config


CRIU_LOG = re.compile(r"(/[^\s:]+/restore\.log)")
KEPT_LOGS = 10  # failed restores' logs kept on the device


def criu_log_errors(message: str, keep_in: Path | None = None, lines: int = 3) -> str:
    """CRIU's own reason, as a suffix for the error message: the first `Error` lines of the restore log the
    engine's error names (the cause comes first, the clean-up's complaints after it). Empty when the log is gone
    or says nothing; the engine itself only says "criu failed". With `keep_in`, the log is copied there (the
    newest KEPT_LOGS stay) and the suffix names the copy."""
    match = CRIU_LOG.search(message)
    if match is None:
        return ""
    log_path = Path(match.group(1))
    why = criu_compat.log_reason(log_path, lines)
    if keep_in is None:
        return why
    try:
        keep_in.mkdir(parents=True, exist_ok=True)
        kept = keep_in / f"{time.strftime('%Y%m%dT%H%M%S')}-{log_path.parent.name}-restore.log"
        shutil.copyfile(log_path, kept)
        for old in sorted(keep_in.glob("*-restore.log"))[:-KEPT_LOGS]:
            old.unlink(missing_ok=True)
    except OSError:
        return why
    return f"{why} (log kept: {kept})"

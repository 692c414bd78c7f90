"""The OCI bundle a sandbox runs from, checked without root, runsc or the base image:
`bundle.oci_config` is a pure function of the spec, the image and the sandbox's paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torpor.sandbox.engine import PortMapping, SandboxError, SandboxSpec, Tmpfs, Volume
from torpor.sandbox.gvisor import bundle
from torpor.sandbox.gvisor.bundle import CHANNEL_MOUNT, DEFAULT_CAPS, INIT_DIR
from torpor.sandbox.images import Image
from torpor.sandbox.initbin import INIT_MOUNT, INIT_PATH

NEEDS_RUNSC = False  # tests/sandbox/conftest.py: these run anywhere

ROOTFS = Path("/nonexistent/torpor-test/rootfs")  # never read: the function is pure
INIT = Path("/nonexistent/torpor-test/bin/init-abc")
CTL = Path("/nonexistent/torpor-test/sandboxes/0123456789ab/ctl")

PASSWD = (
    "root:x:0:0:root:/root:/bin/bash\n"
    "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    "app:x:1000:1001:App:/home/app:/bin/sh\n"
)
GROUP = "root:x:0:\nstaff:x:50:\napp:x:1001:\n"


def image(**kw) -> Image:
    base = dict(name="torpor/test:latest", digest="sha256:" + "0" * 64, rootfs=ROOTFS,
                env=("PATH=/opt/bin:/usr/bin", "LANG=C.UTF-8", "FROM_IMAGE=1"), cmd=(),
                entrypoint=(), workdir="", user="", size=0, created="")  # fmt: skip
    return Image(**{**base, **kw})


def config(spec: SandboxSpec | None = None, img: Image | None = None, **kw) -> dict:
    args = dict(sandbox_id="0123456789ab", hostname="dev", uid=0, gid=0, init_dir=INIT,
                channel_dir=CTL, netns=None)  # fmt: skip
    return bundle.oci_config(spec or SandboxSpec(image="test"), img or image(), **{**args, **kw})


def mounts(cfg: dict) -> dict[str, dict]:
    out = {m["destination"]: m for m in cfg["mounts"]}
    assert len(out) == len(cfg["mounts"]), "a destination is mounted twice"
    return out


def test_a_default_sandbox_runs_init_as_root_over_the_image():
    cfg = config()
    proc = cfg["process"]
    assert proc["args"] == [INIT_PATH, "init", "-H", CHANNEL_MOUNT]  # no command: idle init
    assert proc["user"] == {"uid": 0, "gid": 0}
    assert proc["cwd"] == "/"
    assert proc["capabilities"] == {k: DEFAULT_CAPS for k in ("bounding", "effective",
                                                               "permitted")}  # fmt: skip
    assert "CAP_SYS_ADMIN" not in DEFAULT_CAPS
    assert proc["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}]
    # the image's rootfs, unmodified: runsc's --overlay2=root:memory takes the writes
    assert cfg["root"] == {"path": str(ROOTFS), "readonly": False}
    assert cfg["hostname"] == "dev"
    assert cfg["linux"]["cgroupsPath"] == "/torpor/0123456789ab"
    assert cfg["linux"]["resources"] == {"pids": {"limit": 4096}}
    json.dumps(cfg)  # what the caller writes as config.json


def test_the_command_is_the_specs_else_the_images():
    assert config(img=image(cmd=("sleep", "inf")))["process"]["args"][-3:] == [
        "--", "sleep", "inf"]  # fmt: skip
    spec = SandboxSpec(image="test", cmd=["python3", "-c", "print(1)"])
    args = config(spec, image(cmd=("sleep", "inf")))["process"]["args"]
    assert args == [INIT_PATH, "init", "-H", CHANNEL_MOUNT, "--", "python3", "-c", "print(1)"]


def test_environment_image_then_spec_with_hostname_and_a_default_path():
    env = config(SandboxSpec(image="test", env=["LANG=de_DE.UTF-8", "EMPTY=", "X=a=b"]))
    env_list = env["process"]["env"]
    assert env_list == ["PATH=/opt/bin:/usr/bin", "LANG=de_DE.UTF-8", "FROM_IMAGE=1",
                        "HOSTNAME=dev", "EMPTY=", "X=a=b"]  # fmt: skip
    no_path = config(img=image(env=()))["process"]["env"]
    assert no_path == [f"PATH={bundle.DEFAULT_PATH}", "HOSTNAME=dev"]


def test_workdir_is_the_specs_else_the_images_else_root():
    assert config(img=image(workdir="/srv"))["process"]["cwd"] == "/srv"
    spec = SandboxSpec(image="test", workdir="/work")
    assert config(spec, image(workdir="/srv"))["process"]["cwd"] == "/work"


def test_the_main_process_user_is_passed_to_init_which_stays_root():
    cfg = config(uid=1000, gid=1001)
    assert cfg["process"]["args"][:4] == [INIT_PATH, "init", "-u", "1000:1001"]
    assert cfg["process"]["user"] == {"uid": 0, "gid": 0}


def test_mounts_of_every_sandbox_and_the_host_channel():
    m = mounts(config())
    assert m["/proc"] == {"destination": "/proc", "type": "proc", "source": "proc"}
    assert m["/dev"]["type"] == "tmpfs"
    assert m["/sys"]["options"] == ["ro"]
    assert m[INIT_MOUNT] == {"destination": INIT_MOUNT, "type": "bind", "source": str(INIT),
                             "options": ["rbind", "ro"]}  # fmt: skip
    assert m[CHANNEL_MOUNT] == {"destination": CHANNEL_MOUNT, "type": "bind",
                                "source": str(CTL), "options": ["rbind", "rw"]}  # fmt: skip
    assert m[INIT_DIR] == {"destination": INIT_DIR, "type": "tmpfs", "source": "tmpfs",
                           "options": ["mode=755"]}  # fmt: skip
    assert len(m) == 6  # nothing else without volumes or tmpfs mounts


def test_tmpfs_and_volumes():
    spec = SandboxSpec(
        image="test",
        tmpfs=[Tmpfs.parse("/work:size=64m,mode=1777"), Tmpfs.parse("/cache")],
        volumes=[Volume(host="/srv/data", target="/data", readonly=True),
                 Volume(host="/srv/out", target="/out")],
    )  # fmt: skip
    m = mounts(config(spec))
    assert m["/work"] == {"destination": "/work", "type": "tmpfs", "source": "tmpfs",
                          "options": [f"size={64 << 20}", "mode=1777"]}  # fmt: skip
    assert m["/cache"]["options"] == []
    assert m["/data"] == {"destination": "/data", "type": "bind", "source": "/srv/data",
                          "options": ["rbind", "ro"]}  # fmt: skip
    assert m["/out"]["options"] == ["rbind", "rw"]


def test_network_namespace_empty_or_the_sandbox_networks():
    ns = config()["linux"]["namespaces"]
    assert ns == [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")]
    spec = SandboxSpec(image="test", network="sandbox", ports=[PortMapping(8080, 80)])
    ns = config(spec, netns=Path("/run/netns/tps-0123456789ab"))["linux"]["namespaces"]
    assert ns[-1] == {"type": "network", "path": "/run/netns/tps-0123456789ab"}


def test_limits():
    spec = SandboxSpec(image="test", memory=512 << 20, cpus=1.5, pids=None)
    assert config(spec)["linux"]["resources"] == {
        "memory": {"limit": 512 << 20},
        "cpu": {"quota": 150_000, "period": 100_000},
    }


def test_the_config_is_a_function_of_its_inputs_alone():
    spec = SandboxSpec(image="test", env=["A=1"], tmpfs=[Tmpfs.parse("/t")])
    first = json.dumps(config(spec), sort_keys=True)
    assert json.dumps(config(spec), sort_keys=True) == first
    assert not ROOTFS.exists() and not INIT.exists()  # nothing was read there or made


def test_users_by_name_id_and_group():
    assert bundle.lookup_user("", PASSWD, GROUP) == (0, 0)
    assert bundle.lookup_user("app", PASSWD, GROUP) == (1000, 1001)  # its primary group
    assert bundle.lookup_user("1234", PASSWD, GROUP) == (1234, 1234)
    assert bundle.lookup_user("app:staff", PASSWD, GROUP) == (1000, 50)
    assert bundle.lookup_user("daemon:7", PASSWD, GROUP) == (1, 7)
    with pytest.raises(SandboxError, match="unknown user 'nobody' in image"):
        bundle.lookup_user("nobody", PASSWD, GROUP)
    with pytest.raises(SandboxError, match="unknown group 'wheel' in image"):
        bundle.lookup_user("app:wheel", PASSWD, GROUP)


def test_image_user_reads_the_images_own_files(tmp_path: Path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(PASSWD)
    (tmp_path / "etc" / "group").write_text(GROUP)
    assert bundle.image_user(image(rootfs=tmp_path), "app:staff") == (1000, 50)
    assert bundle.image_user(image(rootfs=tmp_path / "none"), "") == (0, 0)
    with pytest.raises(SandboxError, match="unknown user 'app'"):
        bundle.image_user(image(rootfs=tmp_path / "none"), "app")


@pytest.mark.parametrize("target", ["/proc", "/dev/shm", "/sys", INIT_MOUNT, CHANNEL_MOUNT,
                                    INIT_DIR, f"{INIT_DIR}/procs"])  # fmt: skip
def test_mounts_may_not_hide_what_torpor_uses(target: str):
    with pytest.raises(SandboxError, match=f"cannot mount over {target}: torpor uses it"):
        bundle.check_mounts(SandboxSpec(image="test", tmpfs=[Tmpfs(target)]))


def test_a_target_mounted_twice_is_refused():
    spec = SandboxSpec(image="test", tmpfs=[Tmpfs("/data")],
                       volumes=[Volume(host="/srv", target="/data/")])  # fmt: skip
    with pytest.raises(SandboxError, match="/data is mounted twice"):
        bundle.check_mounts(spec)
    bundle.check_mounts(SandboxSpec(image="test", tmpfs=[Tmpfs("/run/other")]))  # fine

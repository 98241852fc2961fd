"""train.py's malloc: when it re-executes itself with GLIBC_TUNABLES (huge pages) and LD_PRELOAD
(tcmalloc), and the log line that says what the run had (the subprocess tests in
test_train_loop.py check that a real train.py run, supervised or not, ends up with it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from resnet_jax.training import host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_LINUX = {"platform": "linux", "glibc": (2, 36), "thp": "madvise", "accelerator": False}


def test_a_linux_cpu_run_restarts_with_huge_pages():
    assert host.huge_pages_apply({"PATH": "/bin"}, **CPU_LINUX)
    assert host.huge_pages_apply({}, **{**CPU_LINUX, "thp": "always"})
    assert host.huge_pages_apply({}, **{**CPU_LINUX, "glibc": (2, 35)})


def test_the_new_environment_keeps_the_old_one(monkeypatch):
    monkeypatch.setattr(host, "find_tcmalloc", lambda: None)
    env = host.malloc_environ({"PATH": "/bin"})
    if env is None:  # this machine: no glibc >= 2.35 or no THP
        pytest.skip("huge pages do not apply on this machine")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
                   host.SET_BY_TRAIN_ENV: "1"}
    assert host.malloc_environ(env) is None  # no second restart


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
def test_an_installed_tcmalloc_is_preloaded_once_unless_the_user_set_ld_preload(monkeypatch):
    monkeypatch.setattr(host, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
    env = host.malloc_environ({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0",
                   "LD_PRELOAD": "libtcmalloc_minimal.so.4", host.TCMALLOC_SET_BY_TRAIN_ENV: "1"}
    assert host.malloc_environ(env) is None  # no second restart
    # Any LD_PRELOAD of the user's wins, the empty one (the opt-out) too.
    for preload in ("", "libjemalloc.so.2"):
        mine = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0", "LD_PRELOAD": preload}
        assert host.malloc_environ(mine) is None


@pytest.mark.parametrize("environ, change", [
    ({"LD_PRELOAD": ""}, {}),  # the user's opt-out
    ({"LD_PRELOAD": "libjemalloc.so.2"}, {}),
    ({}, {"platform": "darwin"}),
    ({}, {"tcmalloc": None}),  # not installed
    ({}, {"accelerator": True}),
])
def test_no_tcmalloc_where_it_does_not_apply_or_the_user_chose(environ, change):
    facts = {"platform": "linux", "tcmalloc": "libtcmalloc_minimal.so.4", "accelerator": False}
    assert host.tcmalloc_apply({"PATH": "/bin"}, **facts)
    assert not host.tcmalloc_apply(environ, **{**facts, **change})


def test_find_tcmalloc_names_a_library_the_loader_opens():
    found = host.find_tcmalloc()
    if found is None:
        pytest.skip("no tcmalloc on this machine (apt install libtcmalloc-minimal4)")
    assert "tcmalloc" in found
    import ctypes

    ctypes.CDLL(found)  # the name LD_PRELOAD gets resolves


@pytest.mark.parametrize("environ, change", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, {}),  # the user's opt-out
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, {}),  # any setting of theirs wins
    ({}, {"platform": "darwin"}),
    ({}, {"glibc": (2, 34)}),  # no hugetlb tunable yet
    ({}, {"glibc": None}),  # musl
    ({}, {"thp": "never"}),
    ({}, {"thp": None}),  # no THP in this kernel
    ({}, {"accelerator": True}),
])
def test_no_restart_where_it_does_not_apply_or_the_user_chose(environ, change):
    assert not host.huge_pages_apply(environ, **{**CPU_LINUX, **change})


def test_accelerator_runs_are_recognised_from_jax_platforms():
    assert host.accelerator_expected({"JAX_PLATFORMS": "cuda"})
    assert host.accelerator_expected({"JAX_PLATFORMS": "tpu,cpu"})
    expected = host.gpu_plugin_installed()  # False on the CI machine: jax for the CPU only
    assert host.accelerator_expected({"JAX_PLATFORMS": "cpu"}) == expected


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert host.thp_mode(str(path)) == "madvise"
    path.write_text("[always] madvise never\n")
    assert host.thp_mode(str(path)) == "always"
    assert host.thp_mode(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's version is Linux's")
def test_glibc_version_of_this_machine():
    version = host.glibc_version()
    assert version is None or (len(version) == 2 and version >= (2, 0))


def test_the_log_line_says_who_set_it():
    ours = {"GLIBC_TUNABLES": host.HUGE_PAGES, host.SET_BY_TRAIN_ENV: "1"}
    assert host.malloc_note(ours).startswith("malloc: huge pages (train.py set ")
    assert host.malloc_note({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == (
        "malloc: GLIBC_TUNABLES=glibc.malloc.hugetlb=0 (yours)")
    assert host.malloc_note({}) == "malloc: glibc's default (no huge pages)"
    tcmalloc = {**ours, "LD_PRELOAD": "libtcmalloc_minimal.so.4",
                host.TCMALLOC_SET_BY_TRAIN_ENV: "1"}
    assert host.malloc_note(tcmalloc) == (
        "malloc: tcmalloc (train.py set LD_PRELOAD=libtcmalloc_minimal.so.4; "
        "set LD_PRELOAD= to opt out)")
    assert host.malloc_note({"LD_PRELOAD": "libjemalloc.so.2"}) == (
        "malloc: glibc's default (no huge pages); LD_PRELOAD=libjemalloc.so.2 (yours)")


def expected_malloc_note(env: dict[str, str]) -> str:
    """The log line a train.py started with ``env`` prints on this machine."""
    return host.malloc_note(host.malloc_environ(env) or env)


def test_host_module_stands_alone():
    """train.py loads host.py by path before JAX: it must need the standard library only."""
    path = os.path.join(ROOT, "resnet_jax", "training", "host.py")
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('h', {path!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "m.malloc_environ({})\n"
        "heavy = ('jax', 'resnet_jax', 'tensorflow', 'ml_collections')\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

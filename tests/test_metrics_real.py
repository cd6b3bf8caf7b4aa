"""
Metrics and what-if savings on real Debian kernels booted under QEMU
(scripts/testbed). Expected values come from what the guest said about
itself (sysfs, /proc/vmstat, /proc/kpageflags, its command line), never
from vmemspect:

- a real prometheus-node-exporter, started here on 127.0.0.1 with its
  textfile collector on a directory vmemspect writes to, serves vmemspect's
  series; scraped over HTTP, folio counts per hstate and node are the
  guest's, and the vmemmap saved is what its memmap counters lost;
- promtool accepts every exposition;
- the what-if figure of the scheme the kernel uses equals what the page
  tables show and what the kernel's counters say, and one page kept per
  2 MiB folio instead of two saves 2 GiB per TiB, from the population;
- folios whose vmemmap lives in their own hot-plugged memory block
  (memmap_on_memory) are never optimizable, and not counted as savings
  missed; folios allocated with HVO off are optimizable and not optimized.
"""

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import (FORM, KERNELS, kernel_saved_pages, real_run, types_args, vmemspect,
                      vmemspect_json)
from test_monitoring import promtool_check_metrics, samples, series, tool

PAGE = 4096
GIB = 1 << 30
#: memory_block_size of the guests: 128 MiB.
BLOCK_PAGES = (128 << 20) // PAGE


@contextlib.contextmanager
def node_exporter(directory: Path):
    """A prometheus-node-exporter on 127.0.0.1 (a free port), only its
    textfile collector, reading ``directory``; stopped on every exit path."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.TemporaryFile()
    p = subprocess.Popen([tool("prometheus-node-exporter"),
                          f"--web.listen-address=127.0.0.1:{port}",
                          "--collector.disable-defaults", "--collector.textfile",
                          f"--collector.textfile.directory={directory}"],
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if p.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise AssertionError(f"node_exporter did not serve: {log.read()[-2000:]!r}")
                time.sleep(0.1)
        yield url
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        log.close()


def scrape(url: str) -> str:
    return urllib.request.urlopen(url, timeout=10).read().decode()


@pytest.fixture(scope="module")
def exporter(tmp_path_factory):
    directory = tmp_path_factory.mktemp("textfile")
    with node_exporter(directory) as url:
        yield directory, url


SERVED = [(k, "hvo-2m") for k in KERNELS] + [("7.2", "numa"), ("7.2", "mixed")]


@pytest.mark.parametrize("series_, scenario", SERVED, ids=lambda x: x)
@pytest.mark.parametrize("fast", [False, True], ids=["full", "fast"])
def test_node_exporter_serves_the_guests_figures(exporter, series_, scenario, fast):
    directory, url = exporter
    run = real_run(series_, scenario)
    truth = run["truth"]
    assert not truth["errors"], truth["errors"]
    path = directory / "vmemspect.prom"
    vmemspect("vmcore", run["kdump"], *types_args(run), "metrics", "--textfile", str(path),
              *(["--fast"] if fast else []))
    promtool_check_metrics(path.read_text())
    smp = samples(scrape(url))
    # node_exporter read the file without error.
    assert series(smp, "node_textfile_scrape_error") == {(): 0}
    assert series(smp, "vmemspect_scan_success") == {(("reason", ""),): 1}
    # Huge pages per hstate and node: the kernel's counters, and (full
    # scan) the folios found on the lists, both equal sysfs in the guest.
    want = {(size, nid): v["nr_hugepages"] for size, h in truth["hstates"].items()
            for nid, v in h["nodes"].items()}
    counters = {}
    for labels, v in series(smp, "vmemspect_kernel_hugepages").items():
        d = dict(labels)
        key = (d["hstate"].split("-")[1][:-2], d["node"])
        counters[key] = counters.get(key, 0) + v
    assert counters == want
    if not fast:
        found = {}
        for labels, v in series(smp, "vmemspect_hugetlb_folios").items():
            d = dict(labels)
            key = (d["hstate"].split("-")[1][:-2], d["node"])
            found[key] = found.get(key, 0) + v
        assert found == {k: v for k, v in want.items() if v}
        optimized = sum(v for labels, v in series(smp, "vmemspect_hugetlb_folios").items()
                        if dict(labels)["hvo"] == "optimized")
        assert optimized == (16 if scenario == "mixed" else len(truth["hugetlb_folios"]))
    saved = kernel_saved_pages(truth) * PAGE
    assert series(smp, "vmemspect_vmemmap_saved_bytes") == {(): saved}
    assert series(smp, "vmemspect_kernel_vmemmap_saved_bytes") == {(): saved}
    assert series(smp, "vmemspect_vmemmap_saved_kernel_agrees") == {(): 1}
    assert series(smp, "vmemspect_hvo_enabled") == {(): truth["hugetlb_optimize_vmemmap"]}
    info = dict(list(series(smp, "vmemspect_info"))[0])
    assert (info["release"], info["form"]) == (truth["uname"], FORM[series_])


@pytest.mark.parametrize("series_", KERNELS)
def test_what_if_matches_measured_and_kernel(series_):
    """hvo-2m (every folio optimized): the kernel's scheme's figure equals
    the measured vmemmap; its savings (the mask form's net of its shared
    frames) equal the page tables' count and the kernel's counters."""
    run = real_run(series_, "hvo-2m")
    truth = run["truth"]
    doc = vmemspect_json(run, "savings")
    w, s = doc["what_if"], doc["savings"]
    scheme = FORM[series_]
    assert w["scheme"] == scheme and w["measured_is_scheme"] is True
    t = w["total"]
    n = len(truth["hugetlb_folios"])
    assert (t["folios"], t["optimized"], t["not_optimizable"]) == (n, n, 0)
    assert t["pages"]["none"] == 8 * n
    assert t["pages"]["two_page"] == 2 * n and t["pages"]["pointer"] == n
    shared = 1 if scheme == "mask" else 0  # one node, one zone, one order
    assert t["pages"]["mask"] == n + 1
    assert t["pages"]["measured"] == t["pages"][scheme]
    saved = t["pages"]["none"] - t["pages"][scheme] + shared
    assert saved == s["saved_pages"] == kernel_saved_pages(truth)
    # The kernel's memmap counters do not count the shared frame.
    assert t["saved_bytes"][scheme] == (kernel_saved_pages(truth) - shared) * PAGE
    if scheme == "pointer":
        assert s["kernel_optimized_folios"] == n
    # "2 GB per 1 TB of 2 MiB HugeTLB": one page kept per folio instead of
    # two, scaled from these folios to 1 TiB of them.
    two_m = [r for r in w["hstates"] if r["hstate"] == "hugepages-2048kB"][0]
    assert two_m["per_tib_beyond_two_page"]["pointer"] == 2 * GIB
    # The mask form's shared frame, scaled with the folios, costs 1/n of it.
    assert two_m["per_tib_beyond_two_page"]["mask"] == 2 * GIB * (n - 1) // n


def test_what_if_numa_1g_and_two_zones():
    """7.2 numa: 2 MiB folios in two zones and a 1 GiB folio: three shared
    frames; 1 GiB: 4096 vmemmap pages, 2 kept in the two-page scheme."""
    run = real_run("7.2", "numa")
    truth = run["truth"]
    w = vmemspect_json(run, "savings")["what_if"]
    rows = {r["hstate"]: r for r in w["hstates"]}
    g1 = rows["hugepages-1048576kB"]
    assert (g1["folios"], g1["pages"]["none"], g1["pages"]["two_page"], g1["pages"]["mask"]) == (
        1, 4096, 2, 2)
    m2 = rows["hugepages-2048kB"]
    assert m2["folios"] == sum(v["nr_hugepages"] for v in truth["hstates"]["2048"]["nodes"].values())
    assert m2["shared_frames"] == 2
    t = w["total"]
    assert t["pages"]["measured"] == t["pages"]["mask"] == t["folios"] + 3
    assert t["pages"]["none"] - t["pages"]["mask"] + 3 == kernel_saved_pages(truth)


def test_mixed_not_optimized_is_optimizable():
    """7.2 mixed: 16 folios allocated with the sysctl off (now off): not
    optimized, but optimizable: 'if all opt.' and the what-if count them."""
    run = real_run("7.2", "mixed")
    assert run["truth"]["hugetlb_optimize_vmemmap"] == 0
    doc = vmemspect_json(run)
    w = doc["what_if"]
    assert [(r["reason"], r["folios"], r["optimizable"]) for r in w["reasons"]] == [
        ("hvo-off", 16, True)]
    assert w["total"]["folios"] == 32 and w["total"]["optimized"] == 16
    assert w["total"]["pages"]["measured"] == 16 + 1 + 16 * 8
    assert doc["savings"]["possible_pages"] == 32 * 7
    assert sum(g["possible_pages"] for g in doc["groups"]) == 32 * 7


@pytest.mark.parametrize("series_", KERNELS)
def test_hvo_off_at_boot(series_):
    run = real_run(series_, "hvo-off")
    assert "hugetlb_free_vmemmap=off" in run["truth"]["cmdline"]
    w = vmemspect_json(run, "savings")["what_if"]
    n = len(run["truth"]["hugetlb_folios"])
    assert [(r["reason"], r["folios"]) for r in w["reasons"]] == [("hvo-off-at-boot", n)]
    assert w["total"]["pages"]["measured"] == w["total"]["pages"]["none"] == 8 * n


@pytest.mark.parametrize("series_", KERNELS)
def test_hotplug_self_hosted_is_not_optimizable(series_):
    """memmap_on_memory: the 32 folios the page allocator took from the
    hot-added DIMM (above 4 GiB) have their vmemmap inside their own memory
    block, PMD-mapped: never optimizable, so not in 'if all opt.' nor in
    the what-if; the 32 boot-time folios below are optimized; the kernel's
    counters still agree."""
    run = real_run(series_, "hotplug")
    truth = run["truth"]
    assert not truth["errors"], truth["errors"]
    assert any("memmap_on_memory=Y" in s for s in truth["steps"])
    dimm = [f["pfn"] for f in truth["hugetlb_folios"] if f["pfn"] >= 0x100000]
    assert len(dimm) == 32 and len(truth["hugetlb_folios"]) == 64
    folios = {f["pfn"]: f for f in vmemspect_json(run, "folios")["folios"]}
    for pfn in dimm:
        f = folios[pfn]
        assert f["optimized"] is False and f["remapped"] is False
        head = f["head_frame"]
        # The frame behind the folio's struct pages lies in its own block.
        assert head["level"] == "pmd" and head["pfn"] // BLOCK_PAGES == pfn // BLOCK_PAGES
    doc = vmemspect_json(run)
    w = doc["what_if"]
    assert [(r["reason"], r["folios"], r["optimizable"]) for r in w["reasons"]] == [
        ("self-hosted", 32, False)]
    t = w["total"]
    assert (t["folios"], t["optimized"], t["not_optimizable"]) == (32, 32, 32)
    assert t["not_optimizable_bytes"] == 32 * 8 * PAGE
    assert t["pages"]["measured"] == t["pages"][FORM[series_]]
    groups = {g["zone"]: g for g in doc["groups"]}
    assert (groups["Normal"]["not_optimizable"], groups["Normal"]["possible_pages"]) == (32, 0)
    assert (groups["DMA32"]["optimized"], groups["DMA32"]["possible_pages"]) == (32, 32 * 7)
    assert doc["savings"]["possible_pages"] == doc["savings"]["saved_pages"] == 32 * 7
    assert doc["savings"]["kernel_saved_pages"] == kernel_saved_pages(truth) == 32 * 7
    assert doc["verify"]["ok"] is True
    p = vmemspect("vmcore", run["kdump"], *types_args(run), "metrics")
    promtool_check_metrics(p.stdout)
    smp = samples(p.stdout)
    hvo = {}
    for labels, v in series(smp, "vmemspect_hugetlb_folios").items():
        d = dict(labels)
        hvo[(d["zone"], d["hvo"])] = v
    assert hvo == {("DMA32", "optimized"): 32, ("Normal", "not_optimizable"): 32}
    assert series(smp, "vmemspect_not_optimized_folios")[
        (("optimizable", "false"), ("reason", "self-hosted"))] == 32

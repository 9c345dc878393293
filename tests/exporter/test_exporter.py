"""The exporter on real processes: what it serves, and how it survives its targets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import PS, value

import writewatch
from writewatch.exporter import (
    METRICS,
    Exporter,
    mapping_kind,
    parse_listen,
    parse_target,
    reason_class,
)


def test_bad_input_is_refused_in_one_line() -> None:
    for kind, v, msg in (("pid", "0", "not a process id"), ("pid", "x", "not a process id"),
                         ("match", "(", "not a regular expression"),
                         ("cgroup", "/nonexistent/cg", "cgroup")):
        with pytest.raises(writewatch.WriteWatchError, match=msg):
            parse_target(kind, v)
    for bad in ("9464", "localhost:", ":9464", "h:70000", "h:x"):
        with pytest.raises(writewatch.WriteWatchError, match="HOST:PORT"):
            parse_listen(bad)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    with pytest.raises(writewatch.WriteWatchError, match="no target"):
        Exporter([])
    with pytest.raises(writewatch.WriteWatchError, match="twice"):
        Exporter([parse_target("pid", "1"), parse_target("pid", "1")])
    for bad in (0.001, 1e10):
        with pytest.raises(writewatch.WriteWatchError, match="out of range"):
            Exporter([parse_target("pid", "1")], interval=bad)


def test_a_match_never_attaches_the_exporter_or_what_started_it() -> None:
    from writewatch.exporter.targets import _ancestors
    mine = _ancestors(os.getpid())
    assert {os.getpid(), os.getppid()} <= mine and 1 not in mine


def test_cli_errors_are_one_line_and_start_nothing(tmp_path) -> None:
    p = subprocess.run([sys.executable, "-m", "writewatch", "exporter", "--pid", "-3"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
    assert "not a process id" in p.stderr and "Traceback" not in p.stderr


def test_labels_are_bounded() -> None:
    assert mapping_kind("[heap]", "rw-p") == "heap"
    assert mapping_kind("[stack]", "rw-p") == "stack"
    assert mapping_kind("", "rw-p") == "anon" and mapping_kind("", "rw-s") == "shmem"
    assert mapping_kind("/memfd:pc.ram (deleted)", "rw-s") == "shmem"
    assert mapping_kind("/usr/lib/libc.so.6", "rw-p") == "file"
    assert mapping_kind("[vvar]", "r--p") == "other"
    assert reason_class(["3 new writable mapping(s) or part(s): 12 pages reported whole"]) \
        == "new_mapping"
    assert reason_class(["pid 7 joined /x after tracking started: ..."]) == "attached_late"
    assert reason_class(["/dev/shm/x: also mapped writable by pid 9, not tracked"]) \
        == "untracked_sharer"
    assert reason_class(["pid 7 exited before its last writes could be read: ...",
                         "0x1000-0x2000 refused (EINVAL): reported whole"]) == "mixed"
    assert reason_class(["something else"]) == "other"
    for _name, (_kind, labels, _doc) in METRICS.items():
        assert not {"address", "start", "end", "addr"} & set(labels)


def test_rate_and_every_documented_metric_are_served(serve, pacers) -> None:
    a = pacers(2000)
    r = serve([parse_target("pid", str(a.pid))], interval=0.5, window=2.0)
    m = r.wait_for(lambda m: value(m, "writewatch_collects_total") >= 6)
    names = {n for n, _ in m}
    for name, (kind, _labels, _doc) in METRICS.items():
        want = f"{name}_count" if kind == "histogram" else name
        assert want in names, f"{want} not served"
    assert ("process_cpu_seconds_total", ()) in m and ("process_resident_memory_bytes", ()) in m
    lab = {"target": f"pid:{a.pid}", "pid": str(a.pid), "comm": "pacer"}
    rate = value(m, "writewatch_dirty_rate_bytes_per_second", **lab) / PS
    # 2000 pages/s, 20 per 10 ms: one interval of ~0.5 s holds 1000 +- a tick's worth, plus
    # a page or two of the stack
    assert 1800 <= rate <= 2250, rate
    anon = value(m, "writewatch_written_pages_total", kind="anon", **lab)
    collects = value(m, "writewatch_collects_total")
    assert anon >= (collects - 1) * 0.5 * 2000 * 0.85
    ws = value(m, "writewatch_working_set_bytes", **lab) / PS
    assert 2 * 2000 * 0.85 <= ws <= 2 * 2000 * 1.15  # the 2 s window, distinct pages
    assert value(m, "writewatch_armed_bytes", **lab) >= 16384 * PS
    assert value(m, "writewatch_target_up", target=f"pid:{a.pid}") == 1
    assert value(m, "writewatch_tracked_processes") == 1


def test_targets_that_exit_or_cannot_be_attached_are_reported(serve, pacers) -> None:
    a = pacers(500)
    stopped = pacers(500)
    os.kill(stopped.pid, signal.SIGSTOP)  # attach refuses a job-control-stopped process
    gone = max(int(p) for p in os.listdir("/proc") if p.isdigit()) + 100000
    r = serve([parse_target("pid", str(x)) for x in (a.pid, stopped.pid, gone)],
              interval=0.2, retry=0.5)
    m = r.wait_for(lambda m: value(m, "writewatch_collects_total", target=f"pid:{a.pid}") >= 2)
    assert value(m, "writewatch_target_state", target=f"pid:{gone}", state="exited") == 1
    assert value(m, "writewatch_errors_total", target=f"pid:{gone}", kind="NoSuchProcess") == 1
    s = f"pid:{stopped.pid}"
    assert value(m, "writewatch_target_state", target=s, state="failed") == 1
    assert value(m, "writewatch_errors_total", target=s, kind="InvalidTarget") >= 1
    os.kill(stopped.pid, signal.SIGCONT)  # retried: attached once it runs
    r.wait_for(lambda m: value(m, "writewatch_target_up", target=s) == 1)
    a.stop()  # exits while tracked
    m = r.wait_for(lambda m: value(m, "writewatch_target_state", target=f"pid:{a.pid}",
                                   state="exited") == 1)
    assert value(m, "writewatch_tracked_processes", target=f"pid:{a.pid}") == 0
    assert value(m, "writewatch_exits_total", target=f"pid:{a.pid}") == 1
    r.wait_for(lambda m: value(m, "writewatch_collects_total", target=s) >= 3)  # still going


def _cgroup2_root() -> str:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.split(" ", 1)[0] == "cgroup2":
                return pre.split()[4]
    pytest.skip("no cgroup v2 mount")


def test_a_cgroup_whose_processes_come_and_go(serve, pacers) -> None:
    path = os.path.join(_cgroup2_root(), f"writewatch-exporter-test-{os.getpid()}")
    try:
        os.mkdir(path)
    except OSError as exc:
        pytest.skip(f"cgroup v2 not writable here: {exc}")

    def join(pid: int) -> None:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    try:
        spec = parse_target("cgroup", path)
        # a process joining the empty cgroup is attached at the next round, not the retry
        r = serve([spec], interval=0.2, retry=60)
        m = r.wait_for(lambda m: value(m, "writewatch_target_state", target=spec.name,
                                       state="waiting") == 1)  # empty: waits, no error
        assert value(m, "writewatch_errors_total", target=spec.name) == 0
        a = pacers(1000)
        join(a.pid)
        r.wait_for(lambda m: value(m, "writewatch_tracked_processes", target=spec.name) == 1)
        b = pacers(3000)
        join(b.pid)  # joins later: attached at the next collect
        m = r.wait_for(lambda m: value(m, "writewatch_tracked_processes",
                                       target=spec.name) == 2)
        m = r.wait_for(lambda m: value(m, "writewatch_dirty_rate_bytes_per_second",
                                       pid=str(b.pid)) > 0 and value(
            m, "writewatch_collects_total", target=spec.name) >= 8)
        rb = value(m, "writewatch_dirty_rate_bytes_per_second", pid=str(b.pid)) / PS
        assert 3000 * 0.8 <= rb <= 3000 * 1.25, rb
        a.stop()
        m = r.wait_for(lambda m: value(m, "writewatch_tracked_processes",
                                       target=spec.name) == 1)
        assert value(m, "writewatch_target_up", target=spec.name) == 1
        b.stop()
        m = r.wait_for(lambda m: value(m, "writewatch_target_state", target=spec.name,
                                       state="waiting") == 1)
        c = pacers(1000)
        join(c.pid)  # a cgroup outlives its processes: a new one is tracked again
        r.wait_for(lambda m: value(m, "writewatch_tracked_processes", pid=str(c.pid)) == 0
                   and value(m, "writewatch_target_up", target=spec.name) == 1)
    finally:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.05)


def _wp_registered(pid: int) -> int:
    """Mappings of ``pid`` registered with a userfaultfd in write-protect mode: the "uw"
    VmFlag of /proc/PID/smaps (fs/proc/task_mmu.c show_smap_vma_flags, VM_UFFD_WP)."""
    with open(f"/proc/{pid}/smaps") as f:
        return sum(1 for ln in f if ln.startswith("VmFlags:") and "uw" in ln.split()[1:])


def test_sigterm_detaches_everything_and_leaves_the_targets_running(uffd_async,
                                                                    pacers) -> None:
    pytest.importorskip("prometheus_client")
    a = pacers(500)
    assert _wp_registered(a.pid) == 0
    p = subprocess.Popen([sys.executable, "-m", "writewatch", "exporter", "--listen",
                          "127.0.0.1:0", "--pid", str(a.pid), "--interval", "100ms", "-v"],
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stderr is not None
        lines = [p.stderr.readline() for _ in range(2)]
        assert "serving http://127.0.0.1:" in lines[0] and "up" in lines[1], lines
        assert _wp_registered(a.pid) >= 1  # armed
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
        assert "every target detached" in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if p.stderr is not None:
            p.stderr.close()
    assert a.proc.poll() is None and _wp_registered(a.pid) == 0


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _query(base: str, expr: str) -> list[dict]:
    import json
    import urllib.parse
    import urllib.request
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        doc = json.load(r)
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


def test_a_real_prometheus_scrapes_the_known_rate(serve, pacers, tmp_path) -> None:
    """Debian's prometheus scrapes the exporter every second; rate() over its samples gives
    back what the target wrote."""
    import shutil
    import urllib.request
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    a = pacers(1500)
    r = serve([parse_target("pid", str(a.pid))], interval=1.0)
    port = _free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: writewatch\n"
        f"    static_configs: [{{targets: ['{r.url.split('/')[2]}']}}]\n")
    prom = subprocess.Popen([exe, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # ready, and scraping us
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2):
                    pass
                if _query(base, 'up{job="writewatch"} == 1'):
                    break
            except OSError:
                pass
            assert prom.poll() is None, "prometheus exited"
            assert time.monotonic() < deadline, "prometheus did not start scraping"
            time.sleep(0.5)
        time.sleep(12)
        lab = f'target="pid:{a.pid}",pid="{a.pid}"'
        got = _query(base, f'sum(rate(writewatch_written_pages_total{{{lab}}}[10s]))')
        rate = float(got[0]["value"][1])
        # 1500 pages/s; the exporter's 1 s intervals and Prometheus' 1 s scrapes are not
        # aligned, so a 10 s window holds 9-10 intervals' worth: +-12 % sampling error
        assert 1500 * 0.85 <= rate <= 1500 * 1.15, rate
        gauge = float(_query(base, f'avg_over_time(writewatch_dirty_rate_bytes_per_second'
                                   f'{{{lab}}}[10s])')[0]["value"][1]) / PS
        assert 1500 * 0.9 <= gauge <= 1500 * 1.1, gauge
        tree = float(_query(base, f'rate(writewatch_tree_written_pages_total'
                                  f'{{target="pid:{a.pid}"}}[10s])')[0]["value"][1])
        assert tree == pytest.approx(rate, rel=0.05)
        cpu = _query(base, 'rate(process_cpu_seconds_total{job="writewatch"}[10s])')
        assert cpu and 0 <= float(cpu[0]["value"][1]) < 1.0
        # every query of the Grafana dashboard is valid PromQL and finds data
        from test_deploy import dashboard_exprs
        for expr in dashboard_exprs():
            q = (expr.replace("$__rate_interval", "10s").replace("$target", ".*")
                 .replace("$job", ".*").replace("$link_gbps", "10"))
            assert _query(base, q), f"no data for the dashboard's {q}"
    finally:
        prom.terminate()
        try:
            prom.wait(20)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()


def test_importing_the_exporter_needs_numpy_only() -> None:
    code = ("import sys, writewatch, writewatch.exporter, writewatch.cli.exporter; "
            "print([m for m in ('prometheus_client', 'rich', 'matplotlib', 'perfetto') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"

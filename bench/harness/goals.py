"""The bench's goals (issue 23, "Close to the limit"), judged from one run.

The throughput goals compare the service with the fastest server that keeps the same
write-ahead promise (the bare uvloop Protocol echo + WAL), not with one that journals nothing;
the bare echo is shown beside it, so journalling's own cost is in every row too.

Why a module of its own: each goal is a computation over results.json (a ratio of medians
against a target), and the same rows feed RESULTS.md and docs/benchmarks.md's table (`run.py
--readme-table`), so nothing in either is typed by hand. A row that misses its target names the
limit measured in the same run and a way past it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import alternated
from .bake import BASELINE_COMMIT
from .servers import CEILING_NAME, CEILING_WAL_NAME, JOURNAL_FREE_NAME, UNCHECKED_NAME
from .stats import median, ratio

CEILING = CEILING_NAME
CEILING_WAL = CEILING_WAL_NAME
JOURNAL_FREE = JOURNAL_FREE_NAME
UNCHECKED = UNCHECKED_NAME
SERVICE_UVLOOP = "service (uvloop)"
SERVICE_DEFAULT = "service (default loop)"
BASE_UVLOOP = f"echo-first {BASELINE_COMMIT} (uvloop)"
BASE_DEFAULT = f"echo-first {BASELINE_COMMIT} (default loop)"
FSYNC = {p: f"service (uvloop, fsync={p})" for p in ("always", "never")}
SAME_ASYNCIO = "same server, asyncio.run"
CLIENT_BOUND = 0.9
"""A load generator using this share of a core or more may be what limits the rate."""

PINGPONG = 0.85
"""Ping-pong: the service over bare + WAL, per server CPU-second, at least."""
PIPELINE = 0.70
"""Pipelined: the service over bare + WAL, by rate, at least."""
IDLE_KIB = 2.0
"""Idle connection: KiB of RSS per parked connection, at most."""
STARTUP = 1.10
"""Startup to `listening on` over a bare uvloop server to `ready` (.pyc present), at most."""
SEAM = 0.05
"""One more seam's extra server CPU per request, at most."""
METRICS_ON = "service (uvloop, metrics on)"
METRICS_GOAL = 0.95
"""Metrics on may cost at most a few percent of the rate (issue "See inside a running service")."""
CHECKSUM_GOAL = 0.95
"""The journal's CRC-32 may cost at most a few percent (issue "Nothing lost, third round")."""

Row = tuple[str, str, str, str]
"""(measure, result, goal, verdict)"""


def tp(
    results: dict[str, Any], variant: str, mode: str = "pingpong", key: str = "lines_per_s"
) -> list[float]:
    """One figure of every throughput sample of `variant` in `mode`."""
    return [
        s[key] if key in s else s["roundtrips_per_s"]  # results.json before the pipelined mode
        for s in results.get("throughput", [])
        if s["variant"] == variant and s.get("mode", "pingpong") == mode
    ]


def us_per_line(results: dict[str, Any], variant: str, mode: str, side: str = "server") -> float:
    """Median CPU microseconds per line of the server (or the client) of `variant`."""
    return 1e6 * median(
        [
            s[f"{side}_cpu"] / s["lines_per_s"]
            for s in results.get("throughput", [])
            if s["variant"] == variant and s.get("mode", "pingpong") == mode and s["lines_per_s"]
        ]
    )


def _fmt(value: float, goal: float) -> str:
    """Two decimals, or three when two would round onto the goal and hide which side it is."""
    return f"{value:.3f}" if round(value, 2) == goal and value != goal else f"{value:.2f}"


def verdict(ok: bool | None, limit: str = "", way: str = "") -> str:
    if ok is None:
        return "not measured" + (f": {limit}" if limit else "")
    if ok:
        return "met"
    return f"**not met**. Limit: {limit} Way past: {way}"


def _against_ceilings(results: dict[str, Any], mode: str) -> dict[str, float] | None:
    """The service's figures in `mode` over both ceilings', by rate and per server CPU-second,
    and the server CPU per line of all three."""
    ours = tp(results, SERVICE_UVLOOP, mode)
    wal, bare = tp(results, CEILING_WAL, mode), tp(results, CEILING, mode)
    if not (ours and wal and bare):
        return None

    def per_cpu(variant: str) -> list[float]:
        return tp(results, variant, mode, "per_cpu_second")

    return {
        "rate_wal": ratio(ours, wal),
        "cpu_wal": ratio(per_cpu(SERVICE_UVLOOP), per_cpu(CEILING_WAL)),
        "rate_bare": ratio(ours, bare),
        "cpu_bare": ratio(per_cpu(SERVICE_UVLOOP), per_cpu(CEILING)),
        "us": us_per_line(results, SERVICE_UVLOOP, mode),
        "us_wal": us_per_line(results, CEILING_WAL, mode),
        "us_bare": us_per_line(results, CEILING, mode),
        "rate": median(ours),
        "rate_wal_value": median(wal),
    }


def _breakdown(c: dict[str, float], unit: str) -> str:
    """Where the service's CPU per line goes, from the two ceilings of the same run."""
    return (
        f"the service spends {c['us']:.2f} µs of server CPU per {unit}, bare + WAL "
        f"{c['us_wal']:.2f} µs, the bare echo {c['us_bare']:.2f} µs: the write-ahead append "
        f"itself costs {c['us_wal'] - c['us_bare']:.2f} µs, and {c['us'] - c['us_wal']:.2f} µs "
        "is the service's own Python work beyond what journalling needs (framing, limits, the "
        "handler call, timers, the batch bookkeeping and the journal's queue)."
    )


def _result(c: dict[str, float], key: str, goal: float, unit: str) -> str:
    """Both ratios to both ceilings, the goal's in bold."""
    cells = {
        "rate_wal": f"{_fmt(c['rate_wal'], goal)} by rate",
        "cpu_wal": f"{_fmt(c['cpu_wal'], goal)} per server CPU-second",
    }
    cells[key] = f"**{cells[key]}**"
    return (
        f"{cells['rate_wal']}, {cells['cpu_wal']} of bare + WAL "
        f"({c['rate']:,.0f} vs {c['rate_wal_value']:,.0f} {unit}s/s; "
        f"{c['us']:.2f} vs {c['us_wal']:.2f} µs server CPU per {unit}); of the bare echo "
        f"{c['rate_bare']:.2f} by rate, {c['cpu_bare']:.2f} per CPU-second "
        f"({c['us_bare']:.2f} µs)"
    )


def pingpong(results: dict[str, Any]) -> Row | None:
    c = _against_ceilings(results, "pingpong")
    if c is None:
        return None
    return (
        "Ping-pong (50 conns, 1 KiB, one in flight): service on uvloop / bare uvloop Protocol "
        "echo + WAL",
        _result(c, "cpu_wal", PINGPONG, "round trip"),
        f"≥ {PINGPONG:.2f} per server CPU-second",
        verdict(
            c["cpu_wal"] >= PINGPONG,
            _breakdown(c, "round trip"),
            "with one line in flight every read is a batch of one, so the fixed cost per read "
            "is what counts. Tried and shipped: one write per turn on the loop, one timer for "
            "all connections, continuations called by the journal's write instead of a future "
            "per batch. What is left (the profile in bench/NOTES.md) is the batch's own steps "
            "(the read callback, the split, the driver's send into handle, the reply join and "
            "its refusal-byte check, the state machine) and the record's CRC-32, each paid "
            "once per read in Python; the bare + WAL echo does none of them. Going further "
            "means fewer Python calls per read, or a C extension, which a stdlib-only runtime "
            "rules out.",
        ),
    )


def pipelined(results: dict[str, Any]) -> Row | None:
    c = _against_ceilings(results, "pipeline")
    if c is None:
        return None
    return (
        "Pipelined (16 lines per write): service on uvloop / bare uvloop Protocol echo + WAL",
        _result(c, "rate_wal", PIPELINE, "line"),
        f"≥ {PIPELINE:.2f} by rate",
        verdict(
            c["rate_wal"] >= PIPELINE,
            _breakdown(c, "line"),
            "the per-line Python work (splitting, the handler call, joining replies) is what "
            "is left to cut: answer the lines of a read with fewer Python steps per line "
            "(one split, replies gathered once), see bench/NOTES.md.",
        ),
    )


def journal_free(results: dict[str, Any]) -> Row | None:
    """A request the protocol declares journal-free (``needs_journal`` -> False) must cost
    less than a journaled one: server CPU per line of both, in both modes."""
    samples = [s for s in results.get("throughput", []) if s["variant"] == JOURNAL_FREE]
    if not samples:
        return None
    name = "Journal-free requests (`needs_journal` → False) / journaled ones, server CPU per line"
    if any(s.get("journal_bytes", 0) for s in samples):
        return (
            name,
            "n/a",
            "< 1 in both modes",
            verdict(None, "this build journals them anyway (it does not read needs_journal)"),
        )
    cells, faster, slower = [], True, ""
    for mode in ("pingpong", "pipeline"):
        free, ours = (
            us_per_line(results, JOURNAL_FREE, mode),
            us_per_line(results, SERVICE_UVLOOP, mode),
        )
        if free != free or ours != ours:  # nan: the mode did not run
            continue
        cells.append(f"{mode}: **{free / ours:.2f}** ({free:.2f} vs {ours:.2f} µs)")
        faster = faster and free < ours
        if free >= ours and not slower:
            client_free = us_per_line(results, JOURNAL_FREE, mode, "client")
            client_ours = us_per_line(results, SERVICE_UVLOOP, mode, "client")
            slower = (
                f"in {mode}, the load generator spent {client_free:.2f} µs per line against "
                f"the journal-free service and {client_ours:.2f} against the journaled one: "
                "the fewer connections each wake-up of either side finds ready, the more "
                "both pay per line. By rate: "
                f"{median(tp(results, JOURNAL_FREE, mode)):,.0f} vs "
                f"{median(tp(results, SERVICE_UVLOOP, mode)):,.0f} lines/s."
            )
    return (
        name,
        "; ".join(cells),
        "< 1 in both modes",
        verdict(
            faster,
            slower,
            "tried and shipped: journal-free replies go out together at the end of the "
            "turn, as journaled ones do, instead of one at a time inside each read (NOTES: "
            "17.5 -> 14.0 µs per round trip, against 19.1 journaled, alternated).",
        ),
    )


def client_bound(sample: dict[str, Any]) -> bool:
    """The client used (nearly) a full core while the server had CPU to spare: the rate of
    that window is the client's, not the server's. (Both at a full core is the machine's two
    cores at work, with the server the bottleneck.)"""
    return bool(sample["client_cpu"] >= CLIENT_BOUND and sample["server_cpu"] < CLIENT_BOUND)


def load_generator(results: dict[str, Any]) -> Row | None:
    """The client's own CPU: a rate measured with the client at a full core and the server
    not is the client's, so every throughput window is checked."""
    samples = results.get("throughput", [])
    if not samples:
        return None
    busiest = max(samples, key=lambda s: s["client_cpu"])
    bound = [s for s in samples if client_bound(s)]
    c_ping = us_per_line(results, CEILING_WAL, "pingpong", "client")
    s_ping = us_per_line(results, CEILING_WAL, "pingpong")
    which = "C epoll client" if results.get("loadgen", {}).get("c") else "Python fallback client"
    return (
        f"Load generator ({which}) never the bottleneck: in no throughput window is it at a "
        "full core while the server is not",
        f"**{len(bound)}** of {len(samples)} windows client-bound; the client's busiest: "
        f"{busiest['client_cpu']:.0%} of a core, the server {busiest['server_cpu']:.0%} "
        f"({busiest['variant']}, {busiest['mode']})"
        + (
            f"; against bare + WAL in ping-pong it spends {c_ping:.2f} µs per round trip, "
            f"the server {s_ping:.2f} µs"
            if c_ping == c_ping  # not nan: bare + WAL ran
            else ""
        ),
        f"0 windows with the client ≥ {CLIENT_BOUND:.0%} and the server below",
        verdict(
            not bound,
            "in "
            + ", ".join(sorted({f"{s['variant']} ({s['mode']})" for s in bound}))
            + " the client used a full core and the server did not, so that rate is partly "
            "the client's (the per-server-CPU-second ratios do not depend on it).",
            "fewer connections per client process, or two client processes.",
        ),
    )


def idle_memory(results: dict[str, Any]) -> Row | None:
    foot = results.get("footprint") or {}
    samples = foot.get("samples", [])

    def per_conn(variant: str) -> list[float]:
        return [s["kib_per_conn"] for s in samples if s["variant"] == variant]

    ours, bare = per_conn(SERVICE_UVLOOP), per_conn(CEILING)
    if not ours:
        return None
    value = median(ours)
    base = per_conn(BASE_UVLOOP)
    extra = f", echo-first {median(base):.1f}" if base else ""
    return (
        f"Idle connection cost (RSS, 0 → {foot['count']:,} connections, uvloop)",
        f"**{value:.2f} KiB** per connection (bare Protocol echo {median(bare):.2f}{extra})",
        f"≤ {IDLE_KIB} KiB",
        verdict(
            value <= IDLE_KIB,
            f"the bare Protocol echo needs {median(bare):.2f} KiB (socket, transport, "
            f"protocol object); the service's other {value - median(bare):.2f} KiB is the "
            "state it keeps per parked connection beyond that. tracemalloc over 2,000 of "
            "them (bench/NOTES.md), beside what uvloop allocates for any transport: the "
            "connection object (192 B, where the bare echo's protocol has no state), the "
            "accepted Python socket (88 B; the service accepts with sock_accept and "
            "connect_accepted_socket, the bare echo's create_server in C), its entries in "
            "the server's heap of deadlines (94 B) and two floats (48 B). Tried and shipped: "
            "slots, no per-connection objects until first use, a shared read buffer, one "
            "timer for all connections instead of a TimerHandle each (2.10 → 1.69 KiB side "
            "by side, both started without .pyc), and current() reset after each batch "
            "instead of kept in the connection's context (120 B; 2.02 → 1.90 KiB). Tried, "
            "not shipped: heap entries without their tie-breaking number (RSS unchanged). "
            "The section runs with .pyc present whatever ran before it: a start that "
            "compiles leaves freed memory that the first connections reuse.",
            "accept in C (create_server), if the pause on running out of file descriptors "
            "that the service's own accept loop gives can be kept another way.",
        ),
    )


def default_loop(results: dict[str, Any]) -> Row | None:
    ours, base = tp(results, SERVICE_DEFAULT), tp(results, BASE_DEFAULT)
    if not (ours and base):
        return None
    r = ratio(ours, base)
    r_cpu = ratio(
        tp(results, SERVICE_DEFAULT, key="per_cpu_second"),
        tp(results, BASE_DEFAULT, key="per_cpu_second"),
    )
    return (
        f"Default loop, no malloc tuning: service / echo-first {BASELINE_COMMIT} (ping-pong)",
        f"**{_fmt(r, 1.5)}x** ({median(ours):,.0f} vs {median(base):,.0f} /s; "
        f"{r_cpu:.2f}x per server CPU-second)",
        "≥ 1.5x",
        verdict(
            r >= 1.5,
            f"on the default loop the service spends "
            f"{us_per_line(results, SERVICE_DEFAULT, 'pingpong'):.1f} µs "
            f"of server CPU per round trip, the echo-first design "
            f"{us_per_line(results, BASE_DEFAULT, 'pingpong'):.1f} µs. "
            "asyncio's selector loop pays more per read than uvloop: with streams, a fresh "
            "256 KiB buffer per recv(), which glibc's dynamic mmap threshold may serve by "
            "mmap/munmap with page faults on every read, and a task wake-up per line.",
            "asyncio.BufferedProtocol: one read buffer per connection, reused, so the "
            "allocator is out of the path.",
        ),
    )


def startup(results: dict[str, Any]) -> list[Row]:
    start = results.get("startup") or {}
    if not start.get("service") or not start.get("bare_uvloop"):
        return []
    r = ratio(start["service"], start["bare_uvloop"])
    svc, bare = median(start["service"]), median(start["bare_uvloop"])
    rows: list[Row] = [
        (
            f"Startup to `listening on` / bare uvloop server to ready (.pyc present: "
            f"{start.get('pyc_files', '?')} files)",
            f"**{_fmt(r, STARTUP)}** ({svc * 1000:.0f} ms vs {bare * 1000:.0f} ms)",
            f"≤ {STARTUP:.2f}",
            verdict(
                r <= STARTUP,
                f"{(svc - bare) * 1000:.0f} ms more than a bare uvloop server: the modules the "
                "service imports beyond asyncio and uvloop (its own, and pathlib with "
                "urllib.parse and ipaddress for the settings, dataclasses for the runtime) and "
                "the work before listening (settings, logging set-up, opening the journal); "
                "see bench/NOTES.md.",
                "tried: json left the start path (the log imported it at its top); pathlib "
                "(and with it urllib.parse and ipaddress) and dataclasses stay, since the "
                "settings, the journal's paths and the user's own settings class are built on "
                "them; what is left is the service's own modules and its work before "
                "listening.",
            ),
        )
    ]
    if start.get("service_big_journal"):
        big = ratio(start["service_big_journal"], start["service"])
        rows.append(
            (
                f"Startup with a {start['journal_lines']:,}-line journal "
                f"({start['journal_bytes'] / 2**20:.0f} MiB) / with an empty one",
                f"**{_fmt(big, 1.1)}** ({median(start['service_big_journal']) * 1000:.0f} ms vs "
                f"{svc * 1000:.0f} ms)",
                "≤ 1.1 (a no-op recover() reads nothing)",
                verdict(
                    big <= 1.1,
                    f"{(median(start['service_big_journal']) - svc) * 1000:.0f} ms spent on the "
                    "journal before listening.",
                    "skip the replay when recover() is the no-op; fence only the tail.",
                ),
            )
        )
    return rows


def bystander(results: dict[str, Any]) -> Row | None:
    flood = results.get("flood") or {}
    samples = flood.get("samples", [])

    def p99(variant: str, flooded: bool) -> list[float]:
        return [s["p99"] for s in samples if s["variant"] == variant and s["flood"] is flooded]

    ours, quiet = p99(SERVICE_UVLOOP, True), p99(SERVICE_UVLOOP, False)
    if not ours:
        failed = flood.get("failed", {}).get(SERVICE_UVLOOP)
        if failed:
            return (
                "Bystander p99 under flood",
                "failed",
                "< 100 ms",
                verdict(False, failed, "see section 6."),
            )
        return None
    value = median(ours)
    base = p99(BASE_UVLOOP, True)
    base_text = f"; echo-first {median(base) * 1000:.1f} ms" if base else ""
    return (
        "Bystander round trip p99 while another client floods 1 MiB blocks of empty lines",
        f"**{value * 1000:.1f} ms** (quiet: {median(quiet) * 1000:.2f} ms{base_text})",
        "< 100 ms",
        verdict(
            value < 0.1,
            f"the loop serves the flooding connection for up to about {value * 1000:.0f} ms at "
            "a stretch (every line it has buffered) before it turns to the bystander.",
            "yield to the loop after a bounded number of lines or bytes per connection turn.",
        ),
    )


def seam(results: dict[str, Any]) -> Row:
    """The seam's cost: the real service with one more seam than it has, alternated in one
    process (harness/alternated.py); the median of the runs' extra server CPU per request."""
    name = (
        "Seam cost (ping-pong): a second call like the server's into `handle` per request, "
        "in the real service"
    )
    alt = alternated.summary(results.get("seam_alternated") or {}, alternated.SEAM)
    goal = f"≤ {SEAM:.0%}"
    if not alt:
        why = (results.get("seam_alternated") or {}).get("unavailable") or (
            "the seam section did not run"
        )
        return (name, "n/a", goal, verdict(None, why))
    return (
        name,
        f"**{alt['median']:+.1%}** server CPU per request ({alt['us_extra']:.2f} vs "
        f"{alt['us_base']:.2f} µs), median of {alt['runs']} runs alternating both in one "
        f"process ({alt['min']:+.1%} to {alt['max']:+.1%})",
        goal,
        verdict(
            alt["median"] <= SEAM,
            "creating, running and checking a coroutine per request.",
            "let handle() be a plain function when it needs no await.",
        ),
    )


def wal_rows(results: dict[str, Any]) -> list[list[str]]:
    """Write-ahead journal cost: each fsync policy against the echo-first baseline, both modes."""
    settings = results.get("throughput_settings", {})
    unknown = results.get("throughput_unrecognised", {})
    rows = []
    names = [BASE_UVLOOP, SERVICE_UVLOOP, *FSYNC.values()]
    for mode in ("pingpong", "pipeline"):
        base = tp(results, BASE_UVLOOP, mode)
        for name in names:
            values = tp(results, name, mode)
            if not values:
                continue
            env = settings.get(name, {})
            policy = env.get("APP_JOURNAL_FSYNC", "(the build's default)")
            if "APP_JOURNAL_FSYNC" in unknown.get(name, []):
                policy += ": **not recognised by this build** (warned as unknown)"
            rows.append(
                [
                    mode,
                    name,
                    policy if name != BASE_UVLOOP else "n/a: replies before journaling",
                    f"{median(values):,.0f}",
                    f"{median(tp(results, name, mode, 'per_cpu_second')):,.0f}",
                    f"{ratio(values, base):.2f}" if base else "n/a",
                ]
            )
    return rows


def wal_summary(results: dict[str, Any]) -> Row | None:
    """One row for the README: each fsync policy's rate over the echo-first design's."""
    parts = []
    unknown = results.get("throughput_unrecognised", {})
    for mode in ("pingpong", "pipeline"):
        base = tp(results, BASE_UVLOOP, mode)
        cells = []
        for label, name in (
            ("always", FSYNC["always"]),
            ("default", SERVICE_UVLOOP),
            ("never", FSYNC["never"]),
        ):
            values = tp(results, name, mode)
            if values and base:
                flag = "*" if "APP_JOURNAL_FSYNC" in unknown.get(name, []) else ""
                cells.append(f"{label}{flag} {ratio(values, base):.2f}")
        if cells:
            parts.append(f"{mode}: " + ", ".join(cells))
    if not parts:
        return None
    starred = any("*" in p for p in parts)
    return (
        f"Write-ahead journal cost: service on uvloop / echo-first {BASELINE_COMMIT}, "
        "per APP_JOURNAL_FSYNC",
        "; ".join(parts) + (" (* setting not recognised by this build)" if starred else ""),
        "measured",
        "reported (section 3b)",
    )


def _side_by_side(
    results: dict[str, Any], variant: str, reference: str, mode: str
) -> tuple[float, float] | None:
    """``variant`` over ``reference`` in ``mode``: by rate and per server CPU-second; None if
    either did not run."""
    if not (tp(results, variant, mode) and tp(results, reference, mode)):
        return None
    return (
        ratio(tp(results, variant, mode), tp(results, reference, mode)),
        ratio(
            tp(results, variant, mode, "per_cpu_second"),
            tp(results, reference, mode, "per_cpu_second"),
        ),
    )


def metrics_cost(results: dict[str, Any]) -> Row | None:
    """What APP_METRICS_PORT on costs: the batch timing, measured alternated in one process
    (harness/alternated.py), as requests per server CPU-second with it over without.

    Why not the throughput section's two services, on and off: their ratio is that of two
    processes run minutes apart on a shared machine, which spread further than the cost (0.79
    to 1.19 of each other for one run's pairs, at a cost near 1%). They are given beside it.
    """
    alt = alternated.summary(results.get("metrics_alternated") or {}, alternated.METRICS)
    between = []
    for mode in ("pingpong", "pipeline"):
        if (pair := _side_by_side(results, METRICS_ON, SERVICE_UVLOOP, mode)) is not None:
            between.append(f"{mode} {pair[0]:.2f}")
    context = (
        f"; between two processes (section 3, by rate, within its noise): {', '.join(between)}"
        if between
        else ""
    )
    name = "Metrics cost (ping-pong): service with APP_METRICS_PORT on, batches timed / not"
    goal = f"≥ {METRICS_GOAL:.2f}"
    if not alt:
        if not between:
            return None
        why = (results.get("metrics_alternated") or {}).get("unavailable") or (
            "the metrics section did not run"
        )
        return (name, context.removeprefix("; "), goal, verdict(None, why))
    value = 1 / (1 + alt["median"])
    return (
        name,
        f"**{value:.3f}** per server CPU-second ({alt['us_extra']:.2f} vs {alt['us_base']:.2f} µs "
        f"per request; {alt['median']:+.1%}, {alt['min']:+.1%} to {alt['max']:+.1%}), median "
        f"of {alt['runs']} runs alternating both in one process{context}",
        goal,
        verdict(
            value >= METRICS_GOAL,
            "each batch is timed twice with time.perf_counter() and put in a histogram.",
            "time one batch in N (a sampled histogram), or only batches that suspended.",
        ),
    )


def checksum_cost(results: dict[str, Any]) -> Row | None:
    """What the journal's per-record CRC-32 costs: measured alternated in one process
    (harness/alternated.py, section 3e) in both modes, as requests per server CPU-second with
    it over without; the verdict takes the lower mode. The CRC is paid per byte of request, so
    the lines' size and zlib's own time per line (the floor) are given.

    Why not section 3's two services, with and without CRC-32: they are processes run one
    after the other, and the same pair read 0.80, 0.95 and 1.04 of each other in ping-pong in
    three full runs, for a cost of a few percent. Their ratios are given beside it.
    """
    size = results.get("meta", {}).get("tp_size", 1024)
    section = results.get("checksum_alternated") or {}
    between = [
        f"{mode} {pair[0]:.2f}"
        for mode in alternated.MODES
        if (pair := _side_by_side(results, SERVICE_UVLOOP, UNCHECKED, mode)) is not None
    ]
    context = (
        f"; between two processes (section 3, by rate, within its noise): {', '.join(between)}"
        if between
        else ""
    )
    name = "Journal checksum cost: service writing records with CRC-32 / without"
    goal = f"≥ {CHECKSUM_GOAL:.2f}"
    parts, values = [], []
    for mode in alternated.MODES:
        alt = alternated.summary(section.get(mode) or {}, alternated.CHECKSUM)
        if alt is None:
            continue
        values.append(1 / (1 + alt["median"]))
        parts.append(
            f"{mode} **{values[-1]:.3f}** per server CPU-second ({alt['us_extra']:.2f} vs "
            f"{alt['us_base']:.2f} µs per {size:,}-byte line; {alt['median']:+.1%}, "
            f"{alt['min']:+.1%} to {alt['max']:+.1%})"
        )
    if not values:
        if not between:
            return None
        why = alternated.unavailable(section) or "the checksum section did not run"
        return (name, context.removeprefix("; "), goal, verdict(None, why))
    floor = section.get("floor") or {}
    crc = (
        f"zlib's CRC-32 of one {size:,}-byte line takes {floor['crc32_us']:.2f} µs in this "
        f"Python and the record's suffix {floor['record_us'] - floor['crc32_us']:.2f} µs more "
        "(best of 5, before and after its runs: section 3e), so the checksum cannot cost "
        "less than that per line; "
        if floor
        else ""
    )
    return (
        name,
        "; ".join(parts) + f", medians of runs alternating both in one process{context}",
        goal,
        verdict(
            min(values) >= CHECKSUM_GOAL,
            crc + "it is paid per byte while the rest of a pipelined line's work is not, so "
            "pipelined lines pay the largest share. Tried: adler32, the standard library's "
            "only other check, is no cheaper per KiB here; one request's record formatted "
            "without a list and a join (shipped: ping-pong's cost from +7.2% to +6.1%, "
            "bench/NOTES.md); a checksum per batch costs the same per byte and would need a "
            "whole batch in memory to verify it at replay.",
            "a CRC built on the CPU's carry-less multiply (zlib-ng, not in Debian's zlib "
            "1.2.13; the runtime stays stdlib-only) would make it a few percent; lines of 100 "
            "bytes pay a tenth of it.",
        ),
    )


def shutdown(results: dict[str, Any], key: str, label: str, goal: float | None) -> Row | None:
    conns, tasks = results.get("headline_cell", (1000, 10000))
    samples = results.get(key, [])
    if isinstance(samples, dict):
        samples = samples.get("samples", [])

    def values(runner: str) -> list[float]:
        return [
            s["seconds"]
            for s in samples
            if s["runner"] == runner and s["conns"] == conns and s["tasks"] == tasks
        ]

    ours, theirs, floor = values("vendored"), values("aiorun"), values("exit")
    if not (ours and theirs):
        return None

    def returned(runner: str) -> list[float]:
        return [
            s["run_returned"]
            for s in samples
            if s["runner"] == runner
            and s["conns"] == conns
            and s["tasks"] == tasks
            and s.get("run_returned") is not None
        ]

    inside, theirs_inside = returned("vendored"), returned("aiorun")
    split = (
        f"of our {median(ours) * 1000:.0f} ms, run() itself takes {median(inside) * 1000:.0f} ms "
        f"(cancel and await every task, close each connection"
        + (f"; {ratio(inside, theirs_inside):.2f} of aiorun's run()" if theirs_inside else "")
        + f") and the program's exit after it the rest: the interpreter freeing what the "
        f"program holds (here its {tasks:,} cancelled tasks and {conns:,} closed transports) "
        "and handing its memory back, which aiorun's exit pays too, with the tasks left in "
        "reference cycles besides (bench/NOTES.md); "
        if inside
        else ""
    )
    r = ratio(ours, theirs)
    ok = None if goal is None else r <= goal
    return (
        f"Shutdown, SIGTERM → exit, {conns:,} conns + {tasks:,} tasks, {label}: vendored / aiorun",
        f"**{r:.2f}** ({median(ours) * 1000:.0f} ms vs {median(theirs) * 1000:.0f} ms; "
        f"os._exit floor {median(floor) * 1000:.0f} ms)",
        f"≤ {goal:.2f}" if goal is not None else "measured",
        verdict(
            ok,
            split + f"the kernel's own teardown (the os._exit floor) is "
            f"{ratio(floor, theirs):.2f} of aiorun.",
            "tried: a gc.freeze() at exit (atexit) roughly halves SIGTERM → exit here "
            "(bench/NOTES.md), but objects in reference cycles are then never finalized, so a "
            "buffered file in one loses its unflushed data; run() cannot know a program holds "
            "none, so it does not do it. A program that knows can (atexit.register(gc.freeze)).",
        )
        if ok is not None
        else "reported (no target on this version)",
    )


def all_rows(results: dict[str, Any]) -> list[Row]:
    rows: list[Row | None] = [
        pingpong(results),
        pipelined(results),
        load_generator(results),
        journal_free(results),
        idle_memory(results),
        default_loop(results),
        *startup(results),
        bystander(results),
        wal_summary(results),
        metrics_cost(results),
        checksum_cost(results),
        shutdown(
            results, "shutdown", f"Python {results.get('meta', {}).get('python', '3.11')}", 0.30
        ),
    ]
    py314 = results.get("shutdown_py314") or {}
    if py314.get("samples"):
        rows.append(
            shutdown(results, "shutdown_py314", f"Python {py314['python']} (container)", None)
        )
    elif py314.get("skipped"):
        rows.append(
            ("Shutdown on Python 3.14", "not run", "measured", f"skipped: {py314['skipped']}")
        )
    if results.get("seam_alternated") or results.get("throughput"):
        rows.append(seam(results))
    return [row for row in rows if row is not None]


def table(rows: Sequence[Row]) -> list[str]:
    lines = ["| Goal | Result | Target | Verdict |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def readme_table(results: dict[str, Any]) -> list[str]:
    """The benchmark table of docs/benchmarks.md (the page the README links for figures):
    every goal row of this run, with a line saying which run it came from. Printed by
    `python bench/run.py --readme-table DIR`; its links are relative to docs/."""
    meta = results.get("meta", {})
    client = results.get("loadgen", {})
    client_text = (
        ("C epoll load generator" if client.get("c") else "**Python load generator (fallback)**")
        + "; "
        if client
        else ""
    )
    return [
        *table(all_rows(results)),
        "",
        f"From `{meta.get('command', '?')}` on {meta.get('date', '?')}, template at "
        f"`{meta.get('template', '?')}`, {meta.get('cores', '?')} shared cores, Python "
        f"{meta.get('python', '?')}; {client_text}details and raw samples in "
        "[bench/RESULTS.md](../bench/RESULTS.md).",
    ]

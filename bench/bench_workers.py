"""Many Prefect workers ticking one journey on PostgreSQL: one worker vs two, in the same run.

What it starts, all throwaway (a temporary PREFECT_HOME and data directory, removed at the end):
a PostgreSQL server (pgserver), a real `prefect server start` (its own SQLite database), a
process work pool, the deployment `journey-tick/bench` of `flows/journey.py:journey_tick`, and
`prefect worker start --pool … --type process` workers (each with NURTURE_PROJECT and
NURTURE_DATABASE_URL in its environment, as in production).

How the work is split: a journey tick started N times at the same logical time (`now`) — one
flow run per worker — splits itself. Every stage claims its rows with `FOR UPDATE SKIP LOCKED`
(the advance stage a batch of due enrollments, delivery a batch of queued messages), so each
flow run takes the batches no other run holds: a partition per batch, decided as the work goes
(a slower worker simply takes fewer), with no partition count to configure. Inside a run,
`partitions` still splits delivery into tasks, and `delivery_processes` still adds processes on
the worker's machine; here each flow run keeps to one process (`delivery_processes=1`), so one
worker is one core.

Prints JSON: per phase (1 worker / 2 workers, same data each, fresh database) the messages
sent, the seconds from the flow runs' creation to the last one's end, the seconds of the flow
runs themselves (start to end on the server), messages per second, and the checks that
matter: every due contact received exactly one e-mail (sent rows = .eml files = contacts,
no (enrollment, step) sent twice).

    python bench/bench_workers.py [--contacts 100000] [--dir PATH]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_tick  # noqa: E402  (the send tick's project and data)

POOL = "nurture-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_api(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("prefect server did not answer in time")


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the worker and the flow runs it started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def deploy(env: dict) -> None:
    """The deployment of journey_tick on the process pool, from this checkout (in a child
    process, so that this one never talks to a Prefect API of its own)."""
    code = f"""
from prefect import flow
flow.from_source(source={str(ROOT)!r}, entrypoint="flows/journey.py:journey_tick").deploy(
    name="bench", work_pool_name={POOL!r}, print_next_steps=False, build=False, push=False)
"""
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT, capture_output=True)


async def run_flows(api_env: dict, count: int, params: dict) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    os.environ.update({k: v for k, v in api_env.items() if k.startswith("PREFECT_")})
    created = time.perf_counter()
    runs = await asyncio.gather(*[run_deployment("journey-tick/bench", parameters=params, timeout=3600,
                                                 poll_interval=1) for _ in range(count)])
    took = time.perf_counter() - created
    async with get_client() as client:
        runs = [await client.read_flow_run(r.id) for r in runs]
    starts = [r.start_time for r in runs if r.start_time]
    ends = [r.end_time for r in runs if r.end_time]
    return {"flow_runs": count, "states": [r.state_name for r in runs], "seconds_from_creation": round(took, 2),
            "seconds_of_flow_runs": round((max(ends) - min(starts)).total_seconds(), 2) if starts and ends else None,
            "seconds_per_flow_run": [round(r.total_run_time.total_seconds(), 2) for r in runs]}


def checks(rt, contacts: int) -> dict:
    from sqlalchemy import func, select
    from nurture.store.tables import message_t
    with rt.store.engine.connect() as conn:
        sent = conn.execute(select(func.count()).where(message_t.c.status == "sent")).scalar()
        per_contact = conn.execute(select(func.count()).where(message_t.c.status == "sent")
                                   .group_by(message_t.c.contact_id).order_by(func.count().desc()).limit(1)).scalar()
        twice = conn.execute(select(func.count()).select_from(
            select(message_t.c.enrollment_id, message_t.c.step_id).where(message_t.c.status == "sent")
            .group_by(message_t.c.enrollment_id, message_t.c.step_id).having(func.count() > 1).subquery())).scalar()
        other = dict(conn.execute(select(message_t.c.status, func.count()).group_by(message_t.c.status)).all())
        conn.rollback()
    folder = rt.data_dir / "outbox" / "email" / "promo"
    files = sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0
    return {"sent": sent, "eml_files": files, "max_sent_per_contact": per_contact, "enrollment_steps_sent_twice": twice,
            "statuses": other, "double_sends": max(0, files - contacts) + (twice or 0),
            "ok": sent == files == contacts and per_contact == 1 and twice == 0}


def phase(workers: int, args, base: Path, pg, api_env: dict, logs: Path) -> dict:
    url = pg.new_database()
    rt = bench_tick.make(base / f"w{workers}", args.contacts, due=True, url=url)
    bench_tick.run_tick(rt, "promo", bench_tick.NOW - timedelta(minutes=5))  # records the version
    env = {**api_env, "NURTURE_PROJECT": str(rt.project.root), "NURTURE_DATABASE_URL": url,
           "NURTURE_DATA_DIR": str(rt.data_dir), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_WORKER_PREFETCH_SECONDS": "5", "PYTHONWARNINGS": "ignore"}
    procs = [start(["prefect", "worker", "start", "--pool", POOL, "--type", "process", "--name", f"w{workers}-{i}",
                    "--limit", "1"], env, logs / f"worker-{workers}-{i}.log") for i in range(workers)]
    try:
        time.sleep(8)  # the workers register and poll
        params = {"journey": "promo", "now": bench_tick.NOW.isoformat(), "delivery_processes": 1}
        got = asyncio.run(run_flows(api_env, workers, params))
    finally:
        for proc in procs:
            stop(proc)
    result = {"workers": workers, **got, **checks(rt, args.contacts)}
    result["messages_per_second"] = round(result["sent"] / got["seconds_from_creation"])
    if got["seconds_of_flow_runs"]:
        result["messages_per_second_of_flow_runs"] = round(result["sent"] / got["seconds_of_flow_runs"])
    rt.close()
    rt.store.dispose()
    shutil.rmtree(rt.data_dir / "outbox", ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--dir", default=None, help="where the data lives (default: the checkout's .nurture/)")
    args = parser.parse_args()
    base_dir = Path(args.dir) if args.dir else ROOT / ".nurture"
    base_dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="workers-", dir=base_dir))
    logs = base / "logs"
    logs.mkdir()
    port = free_port()
    api_env = {**os.environ, "PREFECT_HOME": str(base / "prefect-home"),
               "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
               "PREFECT_SERVER_LOGGING_LEVEL": "WARNING", "PREFECT_LOGGING_LEVEL": "WARNING",
               # the workers' flow runs import this checkout's nurture, not whatever is installed
               # (a bench run from another checkout or worktree measures that checkout)
               "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    pg = bench_tick.Postgres(base_dir)
    server = start(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], api_env,
                   logs / "server.log")
    out: dict = {"contacts": args.contacts, "directory": str(base), "cores": os.cpu_count()}
    try:
        started = time.perf_counter()
        wait_for_api(api_env["PREFECT_API_URL"], server)
        out["prefect_server_start_seconds"] = round(time.perf_counter() - started, 1)
        subprocess.run(["prefect", "work-pool", "create", POOL, "--type", "process"], env=api_env, check=True,
                       capture_output=True)
        deploy(api_env)
        out["one_worker"] = phase(1, args, base, pg, api_env, logs)
        out["two_workers"] = phase(2, args, base, pg, api_env, logs)
        one, two = out["one_worker"], out["two_workers"]
        out["two_vs_one"] = round(two["messages_per_second"] / one["messages_per_second"], 2)
        out["double_sends"] = out["one_worker"]["double_sends"] + out["two_workers"]["double_sends"]
    finally:
        stop(server)
        pg.close()
        if os.environ.get("BENCH_KEEP_LOGS"):
            print(f"logs kept in {logs}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""A Python gRPC client against a real quernd, with grpcio's default channel
options: the way a user following docs/api.md would call it.

Recent grpcio sends the socket path as the HTTP/2 :authority of every call
on a unix: channel; quernd must answer anyway (see
daemon/src/server/authority.rs). Usage:

    quern_client_smoke.py STUB_DIR SOCKET

where STUB_DIR holds the stubs generated from proto/ by grpc_tools.protoc.
Exits non-zero, with a message that says which step failed, on any failure.
"""

import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Every wait is bounded: a healthy daemon answers in milliseconds, so only a
# broken one reaches this.
WAIT_S = 60.0


class SmokeError(Exception):
    pass


def step(name, call):
    """Runs one call, turning a gRPC error into a message naming the step."""
    try:
        return call()
    except grpc.RpcError as e:
        raise SmokeError(f"{name} failed: {e.code()}: {e.details()}") from None


def wait_serving(health):
    """Waits for the daemon's health check to say SERVING.

    wait_for_ready makes the call wait while the socket does not answer yet
    (the daemon is still starting); NOT_SERVING (boot recovery not done)
    is asked again until the deadline.
    """
    deadline = time.monotonic() + WAIT_S
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SmokeError(f"health never said SERVING within {WAIT_S}s")
        resp = step(
            "health Check",
            lambda: health.Check(
                health_pb2.HealthCheckRequest(service=""),
                timeout=left,
                wait_for_ready=True,
            ),
        )
        if resp.status == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(0.05)


def wait_state(jobs, pb, after_seq, job_id, want):
    """Reads Events for `job_id` after `after_seq` until it reaches `want`;
    fails if it ends in another final state first."""
    final = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}
    events = jobs.Events(
        pb.EventsRequest(after_seq=after_seq, job_id=job_id), timeout=WAIT_S
    )
    try:
        for ev in events:
            if ev.state == want:
                return ev
            if ev.state in final:
                raise SmokeError(
                    f"job {job_id} ended {pb.JobState.Name(ev.state)} "
                    f"({ev.error!r}), expected {pb.JobState.Name(want)}"
                )
    except grpc.RpcError as e:
        raise SmokeError(f"Events for job {job_id} failed: {e.code()}: {e.details()}") from None
    finally:
        events.cancel()
    raise SmokeError(f"Events for job {job_id} ended before {pb.JobState.Name(want)}")


def main(stub_dir, socket, passed):
    """Runs the checks; appends the name of each one that passed."""
    sys.path.insert(0, stub_dir)
    from quern.v1 import jobs_pb2 as pb
    from quern.v1 import jobs_pb2_grpc as pb_grpc

    # No channel options at all: this is the point of the test.
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        jobs = pb_grpc.JobsStub(channel)

        wait_serving(health)
        resp = step(
            "health Check of quern.v1.Jobs",
            lambda: health.Check(
                health_pb2.HealthCheckRequest(service="quern.v1.Jobs"), timeout=WAIT_S
            ),
        )
        if resp.status != health_pb2.HealthCheckResponse.SERVING:
            raise SmokeError(f"quern.v1.Jobs health is {resp.status}, expected SERVING")
        print("health: SERVING")
        passed.append("health")

        # A job that succeeds, followed through Events from before its
        # submit, so no event can be missed.
        seq = step("Stats", lambda: jobs.Stats(pb.StatsRequest(), timeout=WAIT_S)).last_event_seq
        spec = pb.JobSpec(exec=pb.ExecSpec(argv=["echo", "hi from python"]))
        job = step("Submit", lambda: jobs.Submit(pb.SubmitRequest(spec=spec), timeout=WAIT_S)).job
        if job.id == 0:
            raise SmokeError("Submit returned job id 0")
        got = step("Get", lambda: jobs.Get(pb.GetRequest(id=job.id), timeout=WAIT_S)).job
        if got.id != job.id or list(got.spec.exec.argv) != ["echo", "hi from python"]:
            raise SmokeError(f"Get returned {got}, expected job {job.id} with the submitted argv")
        ev = wait_state(jobs, pb, seq, job.id, pb.JOB_STATE_SUCCEEDED)
        if ev.exit_code != 0:
            raise SmokeError(f"job {job.id} succeeded with exit code {ev.exit_code}")
        print(f"job {job.id}: submitted, read back, succeeded")
        passed.append("submit")

        # A job that sleeps, cancelled once it runs.
        seq = step("Stats", lambda: jobs.Stats(pb.StatsRequest(), timeout=WAIT_S)).last_event_seq
        spec = pb.JobSpec(exec=pb.ExecSpec(argv=["sleep", "60"]))
        job = step("Submit", lambda: jobs.Submit(pb.SubmitRequest(spec=spec), timeout=WAIT_S)).job
        wait_state(jobs, pb, seq, job.id, pb.JOB_STATE_RUNNING)
        cancelled = step(
            "Cancel", lambda: jobs.Cancel(pb.CancelRequest(id=job.id), timeout=WAIT_S)
        ).job
        if cancelled.state != pb.JOB_STATE_CANCELLED:
            raise SmokeError(
                f"Cancel answered state {pb.JobState.Name(cancelled.state)}, expected CANCELLED"
            )
        got = step("Get", lambda: jobs.Get(pb.GetRequest(id=job.id), timeout=WAIT_S)).job
        if got.state != pb.JOB_STATE_CANCELLED:
            raise SmokeError(f"Get after Cancel says {pb.JobState.Name(got.state)}")
        print(f"job {job.id}: running, cancelled")
        passed.append("cancel")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} STUB_DIR SOCKET")
    passed = []
    try:
        main(sys.argv[1], sys.argv[2], passed)
    except SmokeError as e:
        print(f"python client smoke test (grpcio {grpc.__version__}): {e}", file=sys.stderr)
        print(f"python: {len(passed)} passed, 1 failed")
        sys.exit(1)
    print(f"python client smoke test passed (grpcio {grpc.__version__}, default channel options)")
    print(f"python: {len(passed)} passed, 0 failed")

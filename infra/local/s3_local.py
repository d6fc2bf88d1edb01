"""A local S3-compatible server (moto in server mode) for people and demos: up, down, demo.

    python infra/local/s3_local.py up      # start on 127.0.0.1:$MASKCORE_S3_PORT (5055), make the bucket
    python infra/local/s3_local.py down    # stop it
    python infra/local/s3_local.py demo    # upload examples/, run the worker --once, print the CSV

The server keeps its objects in memory: stopping it forgets them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PORT = int(os.environ.get("MASKCORE_S3_PORT", "5055"))
ENDPOINT = f"http://127.0.0.1:{PORT}"
BUCKET = os.environ.get("MASKCORE_S3_BUCKET", "maskcore")
PIDFILE = ROOT / ".s3-local.pid"
ENV = {"AWS_ENDPOINT_URL": ENDPOINT, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
       "AWS_DEFAULT_REGION": "us-east-1"}


def _alive() -> bool:
    try:
        urllib.request.urlopen(f"{ENDPOINT}/moto-api/", timeout=1)
        return True
    except OSError:
        return False


def up() -> None:
    if not _alive():
        moto = Path(sys.executable).with_name("moto_server")
        log = open(ROOT / ".s3-local.log", "ab")
        proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(PORT)], stdout=log,
                                stderr=log, start_new_session=True)
        PIDFILE.write_text(str(proc.pid))
        for _ in range(100):
            if _alive():
                break
            time.sleep(0.1)
        else:
            sys.exit(f"the local S3 server did not start; see {ROOT / '.s3-local.log'}")
    os.environ.update(ENV)
    import boto3

    s3 = boto3.client("s3")
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    print(f"local S3 at {ENDPOINT}, bucket s3://{BUCKET}/. Use it with:")
    print("  " + " ".join(f"export {k}={v};" for k, v in ENV.items()))


def down() -> None:
    if PIDFILE.exists():
        try:
            os.kill(int(PIDFILE.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass
        PIDFILE.unlink()
        print("local S3 stopped")
    else:
        print("no local S3 server started from here")


def demo() -> None:
    up()
    import boto3

    s3 = boto3.client("s3")
    from maskcore.storage import walk_files

    examples = ROOT / "examples"
    pictures = [path for path, _ in walk_files(examples)[0]]  # the batch job's walk: no hidden
    for p in pictures:
        key = f"incoming/{p.relative_to(examples).as_posix()}"
        s3.put_object(Bucket=BUCKET, Key=key, Body=p.read_bytes())
    print(f"uploaded {len(pictures)} pictures to s3://{BUCKET}/incoming/")
    code = subprocess.call([sys.executable, "-m", "maskcore", "worker", "--source",
                            f"s3://{BUCKET}/incoming/", "--results", f"s3://{BUCKET}/results/",
                            "--once"], env={**os.environ, **ENV})
    if code:
        sys.exit(code)
    body = s3.get_object(Bucket=BUCKET, Key="results/manifest.csv")["Body"].read().decode()
    print(f"\ns3://{BUCKET}/results/manifest.csv:\n")
    print(body)
    report = ROOT / "results" / "worker-demo" / "report.html"
    code = subprocess.call([sys.executable, "-m", "maskcore", "report", f"s3://{BUCKET}/results/",
                            "--out", str(report)], env={**os.environ, **ENV})
    if code:
        sys.exit(code)
    print(f"the local S3 server at {ENDPOINT} keeps running with these objects; "
          "`make s3-down` stops it")


if __name__ == "__main__":
    commands = {"up": up, "down": down, "demo": demo}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: {sys.argv[0]} up|down|demo")
    commands[sys.argv[1]]()

"""DynamoDB Local's own CPU for one task's requests, under a given JVM command line.

The emulators, not our functions, are the ceiling of the local bench (BENCHMARKS.md). This
starts a private DynamoDB Local with the flags given, sends it the requests one agentq task
makes (a conditional put, updates, transactions, reads and a query, from 8 clients at once),
and prints the emulator's CPU per task from /proc after a warm-up, so two command lines can
be compared on this box. Run by bench/dynamodb_local.sh (it uses boto3 from LocalStack's
virtualenv, so it needs nothing new).
"""

import concurrent.futures
import os
import subprocess
import sys
import time
import uuid

import boto3
from botocore.config import Config

PORT = int(os.environ.get("PORT", "8123"))
WARM = int(os.environ.get("WARM", "300"))
TASKS = int(os.environ.get("TASKS", "600"))
CLIENTS = 8
TABLE = "bench"


def cpu_ms(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


def one_task(db):
    task = f"TASK#{uuid.uuid4()}"
    tenant = f"TENANT#t{uuid.uuid4().int % 4}"
    db.update_item(
        TableName=TABLE,
        Key={"pk": {"S": tenant}, "sk": {"S": "ACTIVE"}},
        UpdateExpression="ADD active :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    item = {"pk": {"S": task}, "sk": {"S": "META"}, "status": {"S": "queued"}, "data": {"S": "x" * 700}}
    db.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": TABLE, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Put": {"TableName": TABLE, "Item": {"pk": {"S": task}, "sk": {"S": "EVENT#1"}, "d": {"S": "q"}}}},
        ]
    )
    db.update_item(
        TableName=TABLE,
        Key={"pk": {"S": task}, "sk": {"S": "META"}},
        UpdateExpression="SET #s = :r ADD events :one",
        ConditionExpression="#s = :q",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":r": {"S": "running"}, ":q": {"S": "queued"}, ":one": {"N": "1"}},
    )
    for step in range(1, 4):
        db.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": TABLE,
                        "Key": {"pk": {"S": task}, "sk": {"S": "META"}},
                        "UpdateExpression": "SET step = :n",
                        "ConditionExpression": "#s = :r",
                        "ExpressionAttributeNames": {"#s": "status"},
                        "ExpressionAttributeValues": {":n": {"N": str(step)}, ":r": {"S": "running"}},
                    }
                },
                {
                    "Put": {
                        "TableName": TABLE,
                        "Item": {"pk": {"S": task}, "sk": {"S": f"STEP#{step}"}, "d": {"S": "y" * 500}},
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {"Put": {"TableName": TABLE, "Item": {"pk": {"S": task}, "sk": {"S": f"EVENT#{step + 2}"}}}},
            ]
        )
        db.get_item(TableName=TABLE, Key={"pk": {"S": task}, "sk": {"S": "META"}}, ConsistentRead=True)
    db.query(
        TableName=TABLE,
        KeyConditionExpression="pk = :p AND begins_with(sk, :e)",
        ExpressionAttributeValues={":p": {"S": task}, ":e": {"S": "EVENT#"}},
    )


def run(db, n):
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(lambda _: one_task(db), range(n)))


def main():
    jvm = sys.argv[1:]
    jar_dir = os.environ["JAR_DIR"]
    cmd = ["java", *jvm, "-Djava.library.path=./DynamoDBLocal_lib", "-jar", "DynamoDBLocal.jar", "-inMemory"]
    cmd += ["-port", str(PORT), *os.environ.get("DDB_FLAGS", "").split()]
    proc = subprocess.Popen(cmd, cwd=jar_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        db = boto3.client(
            "dynamodb",
            endpoint_url=f"http://127.0.0.1:{PORT}",
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            config=Config(max_pool_connections=CLIENTS, retries={"max_attempts": 10, "mode": "standard"}),
        )
        for _ in range(100):
            try:
                db.list_tables()
                break
            except Exception:
                time.sleep(0.2)
        db.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        run(db, WARM)
        cpu0, t0 = cpu_ms(proc.pid), time.monotonic()
        run(db, TASKS)
        cpu1, t1 = cpu_ms(proc.pid), time.monotonic()
        print(
            f"jvm={' '.join(jvm) or '(none)'} flags={os.environ.get('DDB_FLAGS', '')!r} "
            f"cpu_ms_per_task={(cpu1 - cpu0) / TASKS:.2f} tasks_per_s={TASKS / (t1 - t0):.1f}"
        )
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()

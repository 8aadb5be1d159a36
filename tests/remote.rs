//! Remotes, lock files and `--frozen`, against a real S3-protocol server (moto, from the test
//! venv, started here on 127.0.0.1 with credential checks on) and a folder remote.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{lab_results, venv_bin, Output, Sandbox};

/// The venv's `bin/` (moto's server and the Python that sets it up).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Python that talks to the server with boto3: creates the bucket and a user with a key, or
/// reads and writes objects behind sumflow's back.
const SETUP: &str = r#"
import boto3, json, sys
ep = sys.argv[1]
iam = boto3.client("iam", endpoint_url=ep, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
iam.create_user(UserName="ci")
iam.put_user_policy(UserName="ci", PolicyName="all", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="ci")["AccessKey"]
s3 = boto3.client("s3", endpoint_url=ep, region_name="us-east-1",
                  aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
s3.create_bucket(Bucket="sumflow")
print(key["AccessKeyId"], key["SecretAccessKey"])
"#;

const OBJECTS: &str = r#"
import boto3, json, sys
ep, key, secret, op = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=ep, region_name="us-east-1", aws_access_key_id=key, aws_secret_access_key=secret)
if op == "put":
    s3.put_object(Bucket="sumflow", Key=sys.argv[5], Body=open(sys.argv[6], "rb").read())
elif op == "get":
    sys.stdout.write(s3.get_object(Bucket="sumflow", Key=sys.argv[5])["Body"].read().decode())
elif op == "consistent":
    # Every record's objects are there, with the sizes it gives.
    keys = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="sumflow"):
        for o in page.get("Contents", []):
            keys[o["Key"]] = o["Size"]
    records = [k for k in keys if "/ac/" in k]
    for r in records:
        prefix = r.split("/ac/")[0]
        rec = json.loads(s3.get_object(Bucket="sumflow", Key=r)["Body"].read())
        for out in rec["outputs"].values():
            for rel, digest in out["files"].items():
                size = keys.get(f"{prefix}/cas/{digest}")
                assert size == out["sizes"][rel], f"{r}: {rel} -> cas/{digest} is {size}"
    print(len(records), "records", sum(1 for k in keys if "/cas/" in k), "objects")
"#;

/// A moto S3 server on a free port, killed when dropped.
struct S3 {
    child: Child,
    endpoint: String,
    key: String,
    secret: String,
}

impl S3 {
    fn start() -> S3 {
        let port = free_port();
        let child = Command::new(venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // Requests after the first four (the setup's) must be signed with a real key.
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "4")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server from the test venv (python/requirements-test.txt)");
        let endpoint = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(60), "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = Command::new(venv_bin("python")).args(["-c", SETUP, &endpoint]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let (key, secret) = text.trim().split_once(' ').unwrap();
        S3 { child, endpoint, key: key.into(), secret: secret.into() }
    }

    /// The standard AWS environment pointing at this server (and nothing else of the host's).
    fn env<'c>(&self, c: &'c mut Command) -> &'c mut Command {
        c.env("AWS_ACCESS_KEY_ID", &self.key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_ENDPOINT", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
    }

    /// boto3 on the bucket, behind sumflow's back.
    fn objects(&self, args: &[&str]) -> String {
        let out = Command::new(venv_bin("python"))
            .args(["-c", OBJECTS, &self.endpoint, &self.key, &self.secret])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn output(out: std::process::Output) -> Output {
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `sumflow ARGS` in `s` with the server's environment.
fn on_s3(s: &Sandbox, s3: &S3, args: &[&str]) -> Output {
    output(s3.env(&mut s.cmd(args)).output().unwrap())
}

/// Three quick stages on the lab's results: load (not read by anything once its reader is
/// cached: left on the remote), subsample, score (the result).
fn pipeline(every: u32) -> String {
    format!(
        "name: remote-test\n\
         stages:\n  \
           results: {{kind: load, path: {}}}\n  \
           quick: {{kind: subsample, input: results.all, every: {every}}}\n  \
           quick-scores:\n    \
             kind: score\n    \
             input: quick\n    \
             references: human_baseline_summaries\n    \
             predictions: [original_model_summaries, peft_model_summaries]\n    \
             baseline: original_model_summaries\n",
        lab_results()
    )
}

/// A sandbox holding the pipeline (and, if given, its lock), nothing cached.
fn checkout(every: u32, lock: Option<&str>) -> Sandbox {
    let s = Sandbox::new();
    s.write("p.yaml", pipeline(every));
    if let Some(lock) = lock {
        s.write("p.lock", lock);
    }
    s
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// The lock's stages as YAML values, by id.
fn locked_stages(text: &str) -> BTreeMap<String, serde_yaml::Value> {
    let v: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    v["stages"].as_mapping().unwrap().iter().map(|(k, v)| (k.as_str().unwrap().to_string(), v.clone())).collect()
}

/// The blake3 of file `rel` of output `out` of `stage`, from a lock.
fn locked_file(lock: &str, stage: &str, out: &str, rel: &str) -> String {
    locked_stages(lock)[stage]["outputs"][out]["files"][rel]["blake3"].as_str().unwrap().to_string()
}

fn summary(stdout: &str) -> &str {
    &stdout[stdout.find("== quick-scores").expect("the scores' summary")..]
}

#[test]
fn a_folder_remote_round_trip_the_lock_and_frozen_runs() {
    let remote = tempfile::tempdir().unwrap();
    let remote_dir = remote.path().display().to_string();
    let gpu_box = checkout(100, None);
    let first = gpu_box.ok(&["run", "p.yaml", "--push", "--remote", &remote_dir]);
    assert!(first.stderr.contains("3 ran, 0 cached"), "{}", first.stderr);
    assert!(first.stderr.contains("lock p.lock written"), "{}", first.stderr);
    let lock = read(gpu_box.path().join("p.lock"));
    // Stages in file order, each with its key, params, inputs and every output file.
    assert!(lock.starts_with("# sumflow lock file"), "{lock}");
    assert_eq!(locked_stages(&lock).keys().collect::<Vec<_>>(), ["quick", "quick-scores", "results"]);
    let order: Vec<usize> =
        ["  results:", "  quick:", "  quick-scores:"].iter().map(|s| lock.find(s).unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{lock}");
    let quick = &locked_stages(&lock)["quick"];
    assert_eq!(quick["kind"], "subsample");
    assert_eq!(quick["params"]["every"], 100);
    assert_eq!(quick["inputs"]["input"], "results.all");
    let table = &quick["outputs"]["all"]["files"]["table.parquet"];
    assert_eq!(table["blake3"].as_str().unwrap().len(), 64);
    assert!(table["bytes"].as_u64().unwrap() > 1000);
    // Deterministic: a rerun leaves the file as it was.
    let again = gpu_box.ok(&["run", "p.yaml"]);
    assert!(!again.stderr.contains("lock p.lock"), "{}", again.stderr);
    assert_eq!(read(gpu_box.path().join("p.lock")), lock);

    // A fresh checkout with an empty cache: the results come from the remote, the load's
    // table (read by nothing that runs) stays there.
    let ci = checkout(100, Some(&lock));
    let pulled = ci.ok(&["run", "p.yaml", "--pull", "--frozen", "--remote", &remote_dir]);
    assert!(pulled.stderr.contains("0 ran, 3 cached"), "{}", pulled.stderr);
    assert!(pulled.stderr.contains("  hit   results (load)  (on the remote; not needed here)\n"), "{}", pulled.stderr);
    assert_eq!(summary(&pulled.stdout), summary(&first.stdout));
    let load_digest = locked_stages(&lock)["results"]["outputs"]["all"]["digest"].as_str().unwrap().to_string();
    assert!(!ci.cache().join("artifacts").join(&load_digest).exists());
    // The lock's outputs: the scores here, the rest on the remote; without it, two are missing.
    let audit = ci.ok(&["audit", "p.lock", "--remote", &remote_dir]);
    assert_eq!(
        audit.stdout,
        format!("p.lock: all 3 outputs present (1 here, re-hashed, 2 on remote `{remote_dir}`)\n")
    );
    let alone = ci.run(&["audit", "p.lock"]);
    assert_eq!(alone.code, 1);
    assert_eq!(
        alone.stderr,
        format!(
            "error: audit failed: p.lock:\n  results.all: artifact {} is not in the local cache (and no remote was given)\n  \
             quick.all: artifact {} is not in the local cache (and no remote was given)\n",
            &load_digest[..12],
            &locked_stages(&lock)["quick"]["outputs"]["all"]["digest"].as_str().unwrap()[..12]
        )
    );

    // A changed param fails --frozen, naming the stage and the field (and what follows from it).
    ci.write("p.yaml", pipeline(50));
    let frozen = ci.run(&["run", "p.yaml", "--frozen"]);
    assert_eq!(frozen.code, 1, "{}", frozen.stderr);
    assert_eq!(
        frozen.stderr,
        "error: p.lock: the pipeline no longer matches its lock (run without --frozen to update it):\n  \
         stage `quick`: every: 100 → 50\n  stage `quick-scores`: input quick.all changed\n"
    );
    // Rerun, the lock's diff touches that stage and its downstream only.
    let rerun = ci.ok(&["run", "p.yaml", "--remote", &remote_dir, "--pull"]);
    assert!(rerun.stderr.contains("lock p.lock: 2 stage(s) changed"), "{}", rerun.stderr);
    let (before, after) = (locked_stages(&lock), locked_stages(&read(ci.path().join("p.lock"))));
    let changed: Vec<&String> = before.keys().filter(|id| before[*id] != after[*id]).collect();
    assert_eq!(changed, ["quick", "quick-scores"]);
    // The updated lock holds: --frozen passes and computes nothing.
    let held = ci.ok(&["run", "p.yaml", "--frozen"]);
    assert!(held.stderr.contains("0 ran, 3 cached"), "{}", held.stderr);
    // A file in the lock's place that is not a lock is the user's: left alone.
    let user = checkout(100, Some("my notes\n"));
    let refused = user.run(&["run", "p.yaml"]);
    assert_eq!(refused.code, 1);
    assert!(
        refused
            .stderr
            .ends_with("error: p.lock: exists and is not a sumflow lock file: not overwritten (give --lock FILE)\n"),
        "{}",
        refused.stderr
    );
    assert_eq!(read(user.path().join("p.lock")), "my notes\n");
}

#[test]
fn s3_faults_are_refused_named_and_survived() {
    let s3 = S3::start();
    let url = "s3://sumflow/team";
    let gpu_box = checkout(100, None);
    let pushed = on_s3(&gpu_box, &s3, &["run", "p.yaml", "--push", "--remote", url]);
    assert_eq!(pushed.code, 0, "{}", pushed.stderr);
    assert!(pushed.stderr.contains("and 3 records to remote `s3://sumflow/team`"), "{}", pushed.stderr);
    let lock = read(gpu_box.path().join("p.lock"));

    // Two pushes of the same outputs at once, from two machines: both succeed, and every
    // record's objects are there.
    let other = checkout(100, None);
    other.ok(&["run", "p.yaml"]);
    let both = [
        s3.env(&mut gpu_box.cmd(&["push", "p.yaml", "--remote", "s3://sumflow/twice"]))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
        s3.env(&mut other.cmd(&["push", "p.yaml", "--remote", "s3://sumflow/twice"]))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    ];
    for child in both {
        assert!(child.wait_with_output().unwrap().status.success());
    }
    // (The script checks each record's objects; 3 records under each prefix.)
    assert!(s3.objects(&["consistent"]).starts_with("6 records "));

    // An object corrupted in the remote: refused, named, and the stage computed here.
    let metrics = locked_file(&lock, "quick-scores", "metrics", "metrics.json");
    let junk = gpu_box.write("junk", "{\"rouge1\": 1.0}");
    s3.objects(&["put", &format!("team/cas/{metrics}"), junk.to_str().unwrap()]);
    let ci = checkout(100, Some(&lock));
    let recomputed = on_s3(&ci, &s3, &["run", "p.yaml", "--pull", "--remote", url]);
    assert_eq!(recomputed.code, 0, "{}", recomputed.stderr);
    let refusal = format!(
        "  note  remote `s3://sumflow/team`: object cas/{metrics} of stage `quick-scores` is corrupted (its bytes hash to {}): refused; computing `quick-scores` here\n",
        &blake3::hash(b"{\"rouge1\": 1.0}").to_hex()[..12]
    );
    assert!(recomputed.stderr.contains(&refusal), "{}", recomputed.stderr);
    assert!(recomputed.stderr.contains("1 ran, 2 cached"), "{}", recomputed.stderr);
    assert_eq!(summary(&recomputed.stdout), summary(&pushed.stdout));
    // … and with --frozen, the run fails on it.
    let strict = checkout(100, Some(&lock));
    let failed = on_s3(&strict, &s3, &["run", "p.yaml", "--pull", "--frozen", "--remote", url]);
    assert_eq!(failed.code, 1);
    assert!(
        failed.stderr.contains(&format!(
            "error: remote `s3://sumflow/team`: object cas/{metrics} of stage `quick-scores` is corrupted"
        )),
        "{}",
        failed.stderr
    );
    assert!(!strict
        .cache()
        .join("index")
        .read_dir()
        .unwrap()
        .any(|e| read(e.unwrap().path()).contains("quick-scores")));

    // A tampered record (a path out of its artifact): refused, nothing written outside.
    let key = locked_stages(&lock)["quick"]["key"].as_str().unwrap().to_string();
    let record = s3.objects(&["get", &format!("team/ac/{key}.json")]);
    let tampered = record.replacen("\"table.parquet\"", "\"../x\"", 1);
    assert_ne!(tampered, record);
    let bad = gpu_box.write("bad.json", &tampered);
    s3.objects(&["put", &format!("team/ac/{key}.json"), bad.to_str().unwrap()]);
    let victim = checkout(100, Some(&lock));
    let ran = on_s3(&victim, &s3, &["run", "p.yaml", "--pull", "--remote", url, "--pull-all"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        ran.stderr.contains(&format!(
            "  note  remote `s3://sumflow/team`: record ac/{key}.json refused: output `all`: file path `../x` escapes its artifact; computing `quick` here\n"
        )),
        "{}",
        ran.stderr
    );
    assert!(!victim.cache().join("x").exists() && !victim.cache().join("artifacts/x").exists());

    // Bad credentials: one error naming the remote.
    let denied = output(
        s3.env(&mut ci.cmd(&["push", "p.yaml", "--remote", url]))
            .env("AWS_SECRET_ACCESS_KEY", "wrong")
            .output()
            .unwrap(),
    );
    assert_eq!(denied.code, 1);
    assert_eq!(
        denied.stderr,
        "error: remote `s3://sumflow/team`: cannot list its records: it refused the credentials \
         (the backend's environment: AWS_*, GOOGLE_*, AZURE_*): Server returned non-2xx status code: 403 Forbidden (SignatureDoesNotMatch)\n"
    );

    // Unreachable: one line within a bounded time, then the run computes locally.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let t0 = Instant::now();
    let offline = output(
        s3.env(&mut checkout(100, None).cmd(&["run", "p.yaml", "--pull", "--remote", url]))
            .env("AWS_ENDPOINT", &closed)
            .output()
            .unwrap(),
    );
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert_eq!(offline.code, 0, "{}", offline.stderr);
    let first_line = offline.stderr.lines().next().unwrap();
    assert!(
        first_line.starts_with("remote `s3://sumflow/team`: cannot list its records: ")
            && first_line.ends_with("; computing locally"),
        "{}",
        offline.stderr
    );
    assert!(offline.stderr.contains("3 ran, 0 cached"), "{}", offline.stderr);
}

/// A TCP relay to the server that forwards `budget` bytes of requests, then stalls — a push
/// caught in the middle of its uploads — until `cut` drops every connection and stops
/// listening, as a server that dies does.
struct Relay {
    port: u16,
    forwarded: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
}

impl Relay {
    fn start(target: &str, budget: u64) -> Relay {
        let target = target.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (forwarded, cut) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (f, c) = (forwarded.clone(), cut.clone());
        std::thread::spawn(move || {
            while !c.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let server = TcpStream::connect(&target).unwrap();
                let (mut up_from, mut up_to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut down_from, mut down_to) = (server, client);
                let (f, c) = (f.clone(), c.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 << 10];
                    loop {
                        while f.load(Ordering::SeqCst) >= budget && !c.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        let n = if c.load(Ordering::SeqCst) { 0 } else { up_from.read(&mut buf).unwrap_or(0) };
                        if n == 0 || up_to.write_all(&buf[..n]).is_err() {
                            let _ = up_from.shutdown(std::net::Shutdown::Both);
                            let _ = up_to.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        f.fetch_add(n as u64, Ordering::SeqCst);
                    }
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut down_from, &mut down_to);
                });
            }
        });
        Relay { port, forwarded, cut }
    }

    /// Waits until the budget is spent: the push is stalled halfway.
    fn wait_stalled(&self, budget: u64) {
        let t0 = Instant::now();
        while self.forwarded.load(Ordering::SeqCst) < budget {
            assert!(t0.elapsed() < Duration::from_secs(60), "the push never got going");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A push killed halfway (the client, then the server) leaves no record without its objects,
/// and the next push completes.
#[test]
fn a_push_killed_halfway_leaves_no_record_without_its_objects() {
    let s3 = S3::start();
    let s = Sandbox::new();
    // About 38 MB of table, uploaded in parts.
    let mut csv = String::from("id,text\n");
    let mut noise = vec![0u8; 480];
    for i in 0..40_000u32 {
        blake3::Hasher::new().update(&i.to_le_bytes()).finalize_xof().fill(&mut noise);
        let hex: String = noise.iter().map(|b| format!("{b:02x}")).collect();
        csv.push_str(&format!("{i},{hex}\n"));
    }
    s.write("big.csv", &csv);
    s.write("big.yaml", "name: big\nstages:\n  big: {kind: load, path: big.csv}\n  few: {kind: subsample, input: big.all, every: 1000}\n");
    s.ok(&["run", "big.yaml"]);
    let budget = 12 << 20;

    // The client killed with 12 MB sent: objects, maybe; records, none.
    let relay = Relay::start(&s3.endpoint, budget);
    let mut push = s3
        .env(&mut s.cmd(&["push", "big.yaml", "--remote", "s3://sumflow/big"]))
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{}", relay.port))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    relay.wait_stalled(budget);
    push.kill().unwrap();
    push.wait().unwrap();
    relay.cut.store(true, Ordering::SeqCst);
    assert!(s3.objects(&["consistent"]).starts_with("0 records "));
    let again = on_s3(&s, &s3, &["push", "big.yaml", "--remote", "s3://sumflow/big"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(s3.objects(&["consistent"]).starts_with("2 records "));

    // The server gone in the middle of a push: one clear error, in bounded time, no record.
    let relay = Relay::start(&s3.endpoint, budget);
    let t0 = Instant::now();
    let push = s3
        .env(&mut s.cmd(&["push", "big.yaml", "--remote", "s3://sumflow/gone"]))
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{}", relay.port))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    relay.wait_stalled(budget);
    relay.cut.store(true, Ordering::SeqCst);
    let died = output(push.wait_with_output().unwrap());
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    assert_eq!(died.code, 1, "{}", died.stderr);
    assert!(died.stderr.starts_with("error: remote `s3://sumflow/gone`: writing cas/"), "{}", died.stderr);
    assert_eq!(died.stderr.lines().count(), 1, "{}", died.stderr);
    assert!(s3.objects(&["consistent"]).starts_with("2 records "));
    let resumed = on_s3(&s, &s3, &["push", "big.yaml", "--remote", "s3://sumflow/gone"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(s3.objects(&["consistent"]).starts_with("4 records "));
}

#[test]
fn remote_gc_keeps_what_a_lock_names_and_what_is_young() {
    let remote = tempfile::tempdir().unwrap();
    let dir = remote.path().display().to_string();
    let s = checkout(100, None);
    s.ok(&["run", "p.yaml", "--push", "--remote", &dir]);
    s.write("p.yaml", pipeline(50));
    s.ok(&["run", "p.yaml", "--push", "--remote", &dir]);
    let count = |sub: &str| std::fs::read_dir(remote.path().join(sub)).unwrap().count();
    assert_eq!(count("ac"), 5);
    // Young records stay whatever the locks say.
    let young = s.ok(&["cache", "gc", "--remote", &dir, "--keep", "p.lock", "--yes"]);
    assert!(young.stdout.starts_with(&format!("remote `{dir}`: deleted 0 records and 0 objects")), "{}", young.stdout);
    // Past the grace period: a dry run first, then the records of `every: 100` and their objects.
    let dry = s.ok(&["cache", "gc", "--remote", &dir, "--keep", "p.lock", "--grace", "0s"]);
    assert!(dry.stdout.starts_with(&format!("remote `{dir}`: would delete 2 records and 4 objects")), "{}", dry.stdout);
    assert!(dry.stdout.ends_with("(a dry run: --yes deletes them)\n"), "{}", dry.stdout);
    assert_eq!(count("ac"), 5);
    s.ok(&["cache", "gc", "--remote", &dir, "--keep", "p.lock", "--grace", "0s", "--yes"]);
    assert_eq!(count("ac"), 3);
    // What the lock names is whole on the remote.
    let fresh = checkout(50, Some(&read(s.path().join("p.lock"))));
    let audit = fresh.ok(&["audit", "p.lock", "--remote", &dir]);
    assert_eq!(audit.stdout, format!("p.lock: all 3 outputs present (0 here, re-hashed, 3 on remote `{dir}`)\n"));
}

/// The quick lab, pushed from one machine and reproduced on another from the remote: every
/// stage a hit, the scores equal, and no model weights downloaded.
#[cfg(feature = "torch")]
#[test]
fn the_quick_lab_travels_through_s3_without_its_weights() {
    let s3 = S3::start();
    let model = crate::models::tiny_model().display().to_string();
    let data = crate::common::shared("dialogsum").display().to_string();
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/dialogsum-flan-t5.yaml").display().to_string();
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["run".into(), pipeline.clone(), "--lock".into(), "quick.lock".into()];
        for kv in [
            &format!("model={model}"),
            &format!("data={data}"),
            "subsample=100",
            "max_steps=4",
            "max_new_tokens=8",
            "device=cpu",
        ] {
            v.extend(["--set".to_string(), kv.to_string()]);
        }
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let gpu_box = Sandbox::new();
    let a = args(&["--push", "--remote", "s3://sumflow/lab"]);
    let trained = on_s3(&gpu_box, &s3, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(trained.code, 0, "{}", trained.stderr);
    assert!(trained.stderr.contains("15 ran, 0 cached"), "{}", trained.stderr);
    let lock = read(gpu_box.path().join("quick.lock"));

    let ci = Sandbox::new();
    ci.write("quick.lock", &lock);
    let a = args(&["--pull", "--frozen", "--remote", "s3://sumflow/lab"]);
    let reproduced = on_s3(&ci, &s3, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(reproduced.code, 0, "{}", reproduced.stderr);
    assert!(reproduced.stderr.contains("0 ran, 15 cached"), "{}", reproduced.stderr);
    // (The report's path names each machine's cache; the report's digest is in it, equal.)
    let scores = |stdout: &str| {
        let text = &stdout[stdout.find("== scores (score) ==").unwrap()..];
        text.replace(&text[text.find("report: ").unwrap()..text.find("/artifacts/").unwrap()], "report: ")
    };
    assert_eq!(scores(&reproduced.stdout), scores(&trained.stdout));
    // Pulled: the scores and the report, not the fine-tuned weights.
    let pulled: u64 = reproduced
        .stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("remote `s3://sumflow/lab`: ")?
                .split(" pulled (")
                .nth(1)?
                .strip_suffix(" bytes)")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{}", reproduced.stderr));
    let weights =
        locked_stages(&lock)["full"]["outputs"]["model"]["files"]["model.safetensors"]["bytes"].as_u64().unwrap();
    assert!(pulled > 0 && pulled < weights, "pulled {pulled} bytes; the weights are {weights}");
    let artifacts: Vec<_> = std::fs::read_dir(ci.cache().join("artifacts")).unwrap().collect();
    assert!(
        artifacts.iter().all(|a| !a.as_ref().unwrap().path().join("model.safetensors").exists()
            && !a.as_ref().unwrap().path().join("adapter_model.safetensors").exists()),
        "weights were pulled"
    );
}

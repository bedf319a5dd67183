//! Rehearsal of the long-lived fleet layout (k8s/overlays/fleet), without a cluster: reads the
//! rendered manifests (k8s/rendered/fleet.yaml), starts the `evalfleet serve` Deployment's and the
//! worker StatefulSet's containers (`command`, `args`, `env`; the token Secret and the volumes
//! as folders, ports moved to free loopback ones, `cuda:0` to the CPU) as local processes,
//! submits a job as the README says, then deletes the coordinator "pod" (SIGKILL) and starts it
//! again: its queue survives on the outputs volume (`--state-dir`). A flag renamed in the code
//! breaks this test, not a user's cluster.

mod fleet_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_common::{evalfleet_bin, repo, tiny_chat_model, wait_ok, worker_bin};
use serde::Deserialize;
use serde_yaml::Value;

const TOKEN: &str = "fleet-rehearsal-token";
const LIMIT: Duration = Duration::from_secs(600);

fn manifests() -> Vec<Value> {
    let path = repo().join("k8s/rendered/fleet.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run scripts/k8s-render.sh --update)",
            path.display()
        )
    });
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .collect()
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string in {v:?}"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map_or(&[], |s| s.as_slice())
}

/// The pod template's spec of `kind`/`name`.
fn pod_spec<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let doc = docs
        .iter()
        .find(|d| text(d, "kind") == kind && text(&d["metadata"], "name") == name)
        .unwrap_or_else(|| panic!("{kind}/{name} is not in k8s/rendered/fleet.yaml"));
    &doc["spec"]["template"]["spec"]
}

/// A container "scheduled" here: each volume is a folder under `root` named after the volume (so
/// the pods share the PVCs and the Secret); the Secret's `token` key is written into its folder.
struct Pod {
    name: String,
    container: Value,
    mounts: Vec<(String, PathBuf)>,
}

impl Pod {
    fn new(spec: &Value, name: &str, root: &Path) -> Pod {
        let container = seq(&spec["containers"])[0].clone();
        let mut mounts = Vec::new();
        for m in seq(&container["volumeMounts"]) {
            let vol = seq(&spec["volumes"])
                .iter()
                .find(|v| text(v, "name") == text(m, "name"))
                .unwrap();
            let host = root.join(text(vol, "name"));
            std::fs::create_dir_all(&host).unwrap();
            for item in seq(&vol["secret"]["items"]) {
                assert_eq!(text(item, "key"), "token", "the Secret's key is `token`");
                // Each Secret its own token (serve refuses one token for workers and control).
                let secret = text(&vol["secret"], "secretName");
                let token = format!("{TOKEN}-{secret}\n");
                std::fs::write(host.join(text(item, "path")), token).unwrap();
            }
            mounts.push((text(m, "mountPath").to_string(), host));
        }
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Pod {
            name: name.into(),
            container,
            mounts,
        }
    }

    /// A pod path as a host path.
    fn host(&self, path: &str) -> String {
        for (mount, host) in &self.mounts {
            if let Some(rest) = path.strip_prefix(mount.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return format!("{}{rest}", host.display());
            }
        }
        path.to_string()
    }

    fn env(&self) -> BTreeMap<String, String> {
        seq(&self.container["env"])
            .iter()
            .map(|e| {
                let value = match e.get("value") {
                    Some(v) => self.host(v.as_str().unwrap()),
                    None => {
                        assert_eq!(
                            text(&e["valueFrom"]["fieldRef"], "fieldPath"),
                            "metadata.name"
                        );
                        self.name.clone()
                    }
                };
                (text(e, "name").to_string(), value)
            })
            .collect()
    }

    /// The program's file name and the arguments, `$(VAR)` expanded and paths mapped.
    fn command_line(&self) -> (String, Vec<String>) {
        let env = self.env();
        let mut words: Vec<String> = seq(&self.container["command"])
            .iter()
            .chain(seq(&self.container["args"]))
            .map(|w| {
                let w = env
                    .iter()
                    .fold(w.as_str().unwrap().to_string(), |acc, (k, v)| {
                        acc.replace(&format!("$({k})"), v)
                    });
                self.host(&w)
            })
            .collect();
        let program = words.remove(0);
        let name = Path::new(&program)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        (name, words)
    }

    /// Starts it with `flags` values replaced (`(flag, new value)`).
    fn start(&self, bin: PathBuf, flags: &[(&str, &str)]) -> Child {
        let (_, mut args) = self.command_line();
        for (flag, value) in flags {
            let i = args
                .iter()
                .position(|a| a == flag)
                .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
            args[i + 1] = value.to_string();
        }
        Command::new(bin)
            .args(args)
            .envs(self.env())
            // The token must come from the Secret's file, as in the cluster.
            .env_remove("EVALFLEET_TOKEN")
            .env_remove("EVALFLEET_TEST_HOLD_ONCE")
            .env_remove("EVALFLEET_TEST_CRASH_ONCE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

/// The coordinator pod started: its URL from the first stdout line.
fn start_serve(pod: &Pod) -> (Child, String) {
    let (program, _) = pod.command_line();
    assert_eq!(program, "evalfleet");
    let mut child = pod.start(
        evalfleet_bin(),
        &[
            ("--listen", "127.0.0.1:0"),
            ("--metrics-listen", "127.0.0.1:0"),
        ],
    );
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"));
    let url = url.to_string();
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, url)
}

fn start_worker(pod: &Pod, url: &str) -> Child {
    let (program, _) = pod.command_line();
    assert_eq!(program, "evalfleet-worker");
    pod.start(worker_bin(), &[("--coordinator", url), ("--device", "cpu")])
}

/// `evalfleet ARGS --coordinator URL --token-file TOKEN` (the README's client commands).
fn client(url: &str, token: &Path, args: &[&str]) -> String {
    let child = Command::new(evalfleet_bin())
        .args(args)
        .args(["--coordinator", url, "--token-file"])
        .arg(token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_ok(
        child,
        Duration::from_secs(60),
        &format!("evalfleet {args:?}"),
    );
    String::from_utf8(out.stdout).unwrap()
}

fn wait_finished(url: &str, token: &Path, id: &str) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let s: serde_json::Value =
            serde_json::from_str(&client(url, token, &["status", id, "--json"])).unwrap();
        if s["jobs"][0]["state"] == "finished" {
            return s;
        }
        assert!(started.elapsed() < LIMIT, "{id} not finished: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn fleet_layout_serves_submitted_jobs_and_keeps_its_queue_when_the_coordinator_pod_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let docs = manifests();
    let serve_pod = Pod::new(
        pod_spec(&docs, "Deployment", "evalfleet-serve"),
        "serve",
        root,
    );
    let worker_pod = Pod::new(
        pod_spec(&docs, "StatefulSet", "evalfleet-worker"),
        "evalfleet-worker-0",
        root,
    );
    // The clients present the control token, which only the serve pod mounts.
    let token = PathBuf::from(serve_pod.host("/var/run/secrets/evalfleet-control/token"));
    let model = tiny_chat_model(Path::new(&serve_pod.host("/models")));
    // The data set on the models volume too: serve reads only its allowed roots.
    let data = PathBuf::from(serve_pod.host("/models/data"));
    std::fs::create_dir_all(&data).unwrap();
    for entry in std::fs::read_dir(repo().join("yamls/demo"))
        .unwrap()
        .flatten()
    {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), data.join(entry.file_name())).unwrap();
        }
    }
    let out = serve_pod.host("/outputs/job");
    let yaml = root.join("job.yaml");
    std::fs::write(
        &yaml,
        format!(
            "steps: [step1]\nmodel_name_or_path: {}\ntemplate: default\ndataset_dir: {}\n\
             dataset: demo_alpaca\nmax_samples: 4\ncutoff_len: 40\noutput_dir: {out}\n\
             max_new_tokens: 8\ndo_sample: false\n",
            model.display(),
            data.display()
        ),
    )
    .unwrap();

    let (mut serve, url) = start_serve(&serve_pod);
    let mut worker = start_worker(&worker_pod, &url);
    assert_eq!(
        client(&url, &token, &["submit", yaml.to_str().unwrap()]).trim(),
        "job-1"
    );
    let s = wait_finished(&url, &token, "job-1");
    assert_eq!(s["workers"][0]["worker_id"], "evalfleet-worker-0", "{s:#}");
    let predictions = read(&Path::new(&out).join("generated_predictions.jsonl"));

    // The coordinator pod is deleted and replaced; its workers are restarted too (they exit when
    // their coordinator goes).
    kill(&mut serve);
    kill(&mut worker);
    let (mut serve, url) = start_serve(&serve_pod);
    let mut worker = start_worker(&worker_pod, &url);
    let s: serde_json::Value =
        serde_json::from_str(&client(&url, &token, &["status", "--json"])).unwrap();
    assert_eq!(s["jobs"][0]["job_id"], "job-1", "the queue survived: {s:#}");
    assert_eq!(s["jobs"][0]["state"], "finished", "{s:#}");
    std::fs::remove_dir_all(&out).unwrap();
    assert_eq!(
        client(&url, &token, &["submit", yaml.to_str().unwrap()]).trim(),
        "job-2"
    );
    wait_finished(&url, &token, "job-2");
    assert_eq!(
        read(&Path::new(&out).join("generated_predictions.jsonl")),
        predictions
    );
    kill(&mut worker);
    kill(&mut serve);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

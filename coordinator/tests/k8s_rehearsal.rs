//! Rehearsal of the one-shot Kubernetes layout, without a cluster: reads the rendered manifests
//! (k8s/rendered/oneshot.yaml, kept current by scripts/k8s-validate.sh) and starts the coordinator
//! and worker containers' `command`/`args`/`env` as local processes on loopback, with every volume a
//! temporary folder in the pod's layout (the token in the Secret's key path, the job YAML in the
//! ConfigMap's, the PVCs shared between the "pods"). A worker "pod" is killed in the middle of the
//! job and "rescheduled" (started again with the same command line); the job must still finish with
//! every prediction. So a flag, env var or path renamed in the code breaks this test, not a cluster.
//! The tensor-parallel layout (k8s/rendered/tp.yaml: one worker pod = one group of K ranks,
//! `evalfleet-worker --tp-group K`) is rehearsed the same way.
//!
//! What the rehearsal changes, and only this: the binaries' paths (the image's /usr/local/bin → the
//! build), `--listen` (0.0.0.0:PORT → 127.0.0.1:0), the Service URL (→ the coordinator's real
//! address), `--device cuda:N` (→ cpu), and the job runs the worker crate's tiny random-weight
//! llama (`fleet_common::tiny_chat_model`) on the models PVC. For the tensor-parallel layout, one
//! substitution more: `--tp-group K` (K rank processes over NCCL, which needs K GPUs) becomes
//! `--tp-threads K` (the same K ranks as threads of one process on the CPU); the unchanged command
//! line is run first and must fail with the message that asks for an NCCL build.

mod fleet_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use fleet_common::{evalfleet_bin, listening_url, repo, wait, wait_ok, worker_bin};
use serde::Deserialize;
use serde_yaml::Value;

const TOKEN: &str = "rehearsal-token-7f3a";
/// Demo rows the rehearsal job evaluates, and the item at which the first worker "pod" dies.
const SAMPLES: usize = 8;
const CRASH_ITEM: usize = 5;

/// The rendered manifests of layout `name` (k8s/rendered/NAME.yaml).
fn load_manifests(name: &str) -> Vec<Value> {
    let path = repo().join(format!("k8s/rendered/{name}.yaml"));
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

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string in {v:?}"))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| s(d, "kind") == kind && s(&d["metadata"], "name") == name)
        .unwrap_or_else(|| panic!("{kind}/{name} is not in the rendered layout"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map_or(&[], |s| s.as_slice())
}

/// A container of a Job, "scheduled" on this machine: each volume it mounts is a folder under
/// `root` (PVCs, Secrets and ConfigMaps by their own name, so pods share them; emptyDirs per pod).
struct Pod {
    name: String,
    container: Value,
    /// (mountPath, host folder), longest mountPath first.
    mounts: Vec<(String, PathBuf)>,
}

impl Pod {
    /// The pod `name` of Job `job`.
    fn schedule(docs: &[Value], job: &str, name: &str, root: &Path) -> Pod {
        let spec = &find(docs, "Job", job)["spec"]["template"]["spec"];
        let container = seq(&spec["containers"])[0].clone();
        let volumes: BTreeMap<&str, &Value> = seq(&spec["volumes"])
            .iter()
            .map(|v| (s(v, "name"), v))
            .collect();
        let mut mounts = Vec::new();
        for m in seq(&container["volumeMounts"]) {
            let vol = volumes[s(m, "name")];
            let host = if let Some(pvc) = vol.get("persistentVolumeClaim") {
                root.join("pvc").join(s(pvc, "claimName"))
            } else if let Some(secret) = vol.get("secret") {
                let dir = root.join("secret").join(s(secret, "secretName"));
                // The Secret is created by hand with key `token`; the volume maps keys to paths.
                for item in seq(&secret["items"]) {
                    assert_eq!(s(item, "key"), "token", "the Secret's key is `token`");
                    std::fs::create_dir_all(&dir).unwrap();
                    std::fs::write(dir.join(s(item, "path")), format!("{TOKEN}\n")).unwrap();
                }
                dir
            } else if let Some(cm) = vol.get("configMap") {
                root.join("configmap").join(s(cm, "name"))
            } else {
                assert!(vol.get("emptyDir").is_some(), "unexpected volume {vol:?}");
                root.join("pods").join(name).join(s(vol, "name"))
            };
            std::fs::create_dir_all(&host).unwrap();
            mounts.push((s(m, "mountPath").to_string(), host));
        }
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Pod {
            name: name.into(),
            container,
            mounts,
        }
    }

    /// The host path of a path as the pod sees it (unchanged when no volume holds it).
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

    /// The container's environment, as the kubelet builds it (literal values, the pod's name).
    fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for e in seq(&self.container["env"]) {
            let value = match e.get("value") {
                Some(v) => self.host(v.as_str().unwrap()),
                None => {
                    let field = s(&e["valueFrom"]["fieldRef"], "fieldPath");
                    assert_eq!(field, "metadata.name", "unexpected fieldRef in {e:?}");
                    self.name.clone()
                }
            };
            env.insert(s(e, "name").to_string(), value);
        }
        env
    }

    /// `command` + `args` with `$(VAR)` expanded and paths mapped to the host; the program is
    /// returned apart, by its file name.
    fn command_line(&self) -> (String, Vec<String>) {
        let env = self.env();
        let expand = |a: &str| {
            env.iter().fold(a.to_string(), |acc, (k, v)| {
                acc.replace(&format!("$({k})"), v)
            })
        };
        let mut words: Vec<String> = seq(&self.container["command"])
            .iter()
            .chain(seq(&self.container["args"]))
            .map(|w| self.host(&expand(w.as_str().expect("a string argument"))))
            .collect();
        let program = words.remove(0);
        let name = Path::new(&program)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        (name, words)
    }

    fn command(&self, program: PathBuf, args: &[String]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(self.env())
            // The token must come from the Secret's file, as in the cluster.
            .env_remove("EVALFLEET_TOKEN")
            .env_remove("EVALFLEET_TEST_CRASH_ONCE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

/// Replaces the value after `flag`, returning the old one.
fn set_flag(args: &mut [String], flag: &str, value: &str) -> String {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    std::mem::replace(&mut args[i + 1], value.to_string())
}

/// The small job the rehearsal runs instead of the layout's example (`models`, `outputs`: where the
/// pod's /models and /outputs are on this machine; `tp`: the layout's tensor_parallel_size).
fn rehearsal_job(models: &str, outputs: &str, tp: Option<u64>) -> String {
    let tp_line = tp.map_or(String::new(), |k| format!("tensor_parallel_size: {k}\n"));
    format!(
        "steps: [step1]\nmodel_name_or_path: {models}/tiny-llama-chat\ntemplate: default\n\
         dataset_dir: {models}/data\ndataset: demo_alpaca\nmax_samples: {SAMPLES}\ncutoff_len: 40\n\
         output_dir: {outputs}/rehearsal\noverwrite_output_dir: true\n\
         per_device_eval_batch_size: 2\npredict_with_generate: true\nmax_new_tokens: 8\n{tp_line}"
    )
}

/// The layout's job YAML (the ConfigMap's only key, `job.yaml`).
fn layout_job(docs: &[Value]) -> Value {
    let cm = find(docs, "ConfigMap", "evalfleet-job");
    let keys: Vec<&str> = cm["data"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(keys, ["job.yaml"], "the ConfigMap holds the job YAML");
    serde_yaml::from_str(s(&cm["data"], "job.yaml")).expect("the ConfigMap's job.yaml is YAML")
}

/// The tensor-parallel group size of the worker container (`--tp-group K`), checked against the
/// GPUs the container asks for and the job's tensor_parallel_size (set K in all three places).
fn group_size(docs: &[Value], args: &[String]) -> Option<u64> {
    let i = args.iter().position(|a| a == "--tp-group")?;
    let k: u64 = args[i + 1].parse().expect("--tp-group K");
    let spec = &find(docs, "Job", "evalfleet-worker")["spec"]["template"]["spec"];
    let resources = &seq(&spec["containers"])[0]["resources"];
    for part in ["requests", "limits"] {
        assert_eq!(
            resources[part]["nvidia.com/gpu"].as_u64(),
            Some(k),
            "--tp-group {k} needs {k} GPUs in {part}"
        );
    }
    let job_tp = layout_job(docs)["tensor_parallel_size"].as_u64();
    assert_eq!(
        job_tp,
        Some(k),
        "the job's tensor_parallel_size is the group size"
    );
    Some(k)
}

#[test]
fn oneshot_layout_runs_locally_and_survives_a_worker_pod_rescheduled_mid_run() {
    rehearse("oneshot");
}

#[test]
fn tensor_parallel_layout_runs_a_group_per_pod_and_survives_a_group_rescheduled_mid_run() {
    rehearse("tp");
}

/// Starts the coordinator pod's command line `args`: the pod binds its named ports on every
/// interface, here any free loopback port (the health port answers the probes for the whole
/// run). Returns the process and the URL it listens on.
fn start_coordinator(coord: &Pod, mut args: Vec<String>) -> (std::process::Child, String) {
    for (flag, name) in [("--listen", "grpc"), ("--health-listen", "health")] {
        let port = seq(&coord.container["ports"])
            .iter()
            .find(|p| s(p, "name") == name)
            .unwrap_or_else(|| panic!("a port named {name}"))["containerPort"]
            .as_u64()
            .unwrap();
        assert_eq!(
            set_flag(&mut args, flag, "127.0.0.1:0"),
            format!("0.0.0.0:{port}")
        );
    }
    listening_url(
        coord
            .command(evalfleet_bin(), &args)
            .spawn()
            .expect("starting the coordinator"),
    )
}

/// A worker pod's command line with the common substitutions: it dials the coordinator at `url`
/// (the Service that selects the coordinator pod, in the cluster); `cpu` replaces its device.
fn worker_command_line(docs: &[Value], pod: &Pod, url: &str, cpu: bool) -> Vec<String> {
    let svc = find(docs, "Service", "evalfleet-coordinator");
    let svc_port = seq(&svc["spec"]["ports"])[0]["port"].as_u64().unwrap();
    let (program, mut args) = pod.command_line();
    assert_eq!(program, "evalfleet-worker");
    assert_eq!(
        set_flag(&mut args, "--coordinator", url),
        format!("http://evalfleet-coordinator:{svc_port}")
    );
    if cpu {
        assert!(set_flag(&mut args, "--device", "cpu").starts_with("cuda:"));
    }
    assert_eq!(
        args[args.iter().position(|a| a == "--worker-id").unwrap() + 1],
        pod.name
    );
    args
}

/// The coordinator pod, "scheduled" under `root`: it runs `evalfleet run <job>` on the
/// ConfigMap's job.yaml. Returns the pod, its command line's arguments and the job's host path.
fn coordinator_pod(docs: &[Value], root: &Path) -> (Pod, Vec<String>, PathBuf) {
    let coord = Pod::schedule(
        docs,
        "evalfleet-coordinator",
        "evalfleet-coordinator-xxxxx",
        root,
    );
    let (program, args) = coord.command_line();
    assert_eq!(
        program, "evalfleet",
        "the coordinator container runs `evalfleet`"
    );
    assert_eq!(args[0], "run", "one-shot: `evalfleet run <job>`");
    let job_path = PathBuf::from(&args[1]);
    assert!(
        job_path.starts_with(root.join("configmap/evalfleet-job"))
            && job_path.ends_with("job.yaml"),
        "`run` must read the ConfigMap's job.yaml, got {}",
        job_path.display()
    );
    (coord, args, job_path)
}

/// Runs layout `layout`'s coordinator and one worker pod (killed mid-run, then started again)
/// and checks the job's outputs.
fn rehearse(layout: &str) {
    let docs = load_manifests(layout);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();

    // The coordinator pod: the job YAML at the ConfigMap's key path, the demo data on the models PVC.
    let (coord, args, job_path) = coordinator_pod(&docs, root);
    let worker_pod = |name: &str| Pod::schedule(&docs, "evalfleet-worker", name, root);
    let tp = group_size(
        &docs,
        &worker_pod("evalfleet-worker-0-probe").command_line().1,
    );
    assert_eq!(
        tp.is_some(),
        layout == "tp",
        "only the tp layout runs groups"
    );
    let (models, outputs) = (coord.host("/models"), coord.host("/outputs"));
    std::fs::write(&job_path, rehearsal_job(&models, &outputs, tp)).unwrap();
    let data = PathBuf::from(&models).join("data");
    std::fs::create_dir_all(&data).unwrap();
    for f in ["dataset_info.json", "demo_alpaca.json"] {
        std::fs::copy(repo().join("yamls/demo").join(f), data.join(f)).unwrap();
    }
    // 4 attention heads and 2 KV heads: a group of 2 splits them.
    fleet_common::tiny_chat_model(Path::new(&models));

    let (coordinator, url) = start_coordinator(&coord, args);
    let worker_args = |pod: &Pod, cpu: bool| worker_command_line(&docs, pod, &url, cpu);
    let start_worker = |pod: &Pod, crash: Option<&Path>| {
        let mut args = worker_args(pod, true);
        if let Some(k) = tp {
            // The one tensor-parallel substitution: K ranks as threads instead of processes.
            let i = args.iter().position(|a| a == "--tp-group").unwrap();
            args[i] = "--tp-threads".into();
            assert_eq!(args[i + 1], k.to_string());
        }
        let mut cmd = pod.command(worker_bin(), &args);
        if let Some(marker) = crash {
            // The worker's fault-injection test hook.
            fleet_common::require_test_hooks();
            let spec = format!("{}:{CRASH_ITEM}", marker.display());
            cmd.env("EVALFLEET_TEST_CRASH_ONCE", spec);
        }
        cmd.spawn().expect("starting a worker")
    };

    if tp.is_some() {
        // The group's own command line, unchanged: this build has no NCCL, and the launcher must
        // say so (and exit non-zero, so the pod is not counted as a finished worker).
        let pod = worker_pod("evalfleet-worker-0-nogpu");
        let refused = wait(
            pod.command(worker_bin(), &worker_args(&pod, false))
                .spawn()
                .unwrap(),
            Duration::from_secs(60),
        );
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("--tp-group") && stderr.contains("--features nccl"),
            "{stderr}"
        );
    }

    // One worker pod, killed mid-run: no other worker can finish the job for it.
    let marker = root.join("crashed");
    let first = worker_pod("evalfleet-worker-0-aaaaa");
    let died = wait(
        start_worker(&first, Some(&marker)),
        Duration::from_secs(120),
    );
    assert!(
        marker.exists(),
        "the worker never reached item {CRASH_ITEM}: the kill proved nothing"
    );
    assert_eq!(
        died.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&died.stderr)
    );

    // The Job "reschedules" it: a new pod, the same command line.
    let second = worker_pod("evalfleet-worker-0-bbbbb");
    let rescheduled = wait_ok(
        start_worker(&second, None),
        Duration::from_secs(180),
        "the rescheduled worker pod",
    );
    if let Some(k) = tp {
        let stderr = String::from_utf8_lossy(&rescheduled.stderr);
        assert!(
            stderr.contains(&format!("tensor parallelism: {k} ranks as threads")),
            "the rescheduled pod must run a group of {k}: {stderr}"
        );
    }
    wait_ok(coordinator, Duration::from_secs(120), "the coordinator pod");

    // Every demo row has its prediction on the outputs PVC.
    let out = PathBuf::from(&outputs).join("rehearsal");
    let jsonl = std::fs::read_to_string(out.join("generated_predictions.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), SAMPLES, "{jsonl}");
    for line in jsonl.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(row["predict"].is_string(), "a prediction in {line}");
    }
    assert!(out.join("all_results.json").is_file());
}

/// The four-step job of [`oneshot_layout_runs_a_four_step_job_with_the_files_of_a_local_run`]:
/// models and data under `models`, outputs under `outputs`. Step 1 → step 2 on the tiny chat
/// model and all-MiniLM-L6-v2, step 3 on one tiny MMLU subject, step 4 with SmolLM2 (its own
/// chat template) and the tiny reward model on one short CharacterEval dialogue.
fn four_step_job(models: &Path, outputs: &Path) -> String {
    format!(
        "steps: [step1, step2, step3, step4]\nmodel_name_or_path: {m}/tiny-llama-chat\n\
         template: default\nbatch_size: 2\n\
         step1: {{dataset_dir: {m}/data, dataset: demo_alpaca, max_samples: 4, cutoff_len: 40, \
         max_new_tokens: 6, do_sample: false, output_dir: {o}/sft}}\n\
         step2: {{model_path: {m}/all-minilm-l6-v2, output_dir: {o}/sft}}\n\
         step3: {{task_dir: {m}/tasks, tasks: [mmlu], langs: [en], splits: [test], n_shot: 1, \
         save_dir: {o}/step3}}\n\
         step4: {{model_path: {m}/smollm2.gguf, reward_model_path: {m}/reward, \
         task_dir: {m}/charactereval, output_dir: {o}/CharacterEval, max_samples: 1, \
         max_new_tokens: 6, do_sample: false}}\n",
        m = models.display(),
        o = outputs.display(),
    )
}

/// The four-step job's models and data on the models volume `models`.
fn stage_four_step_models(models: &Path) {
    let data = models.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for f in ["dataset_info.json", "demo_alpaca.json"] {
        std::fs::copy(repo().join("yamls/demo").join(f), data.join(f)).unwrap();
    }
    fleet_common::tiny_chat_model_long(models);
    fleet_common::tiny_mmlu(&models.join("tasks"));
    fleet_common::short_charactereval(models);
    for (link, target) in [
        ("all-minilm-l6-v2", fleet_common::minilm()),
        ("reward", fleet_common::tiny_reward_model()),
        ("smollm2.gguf", fleet_common::smollm2()),
    ] {
        std::os::unix::fs::symlink(target, models.join(link)).unwrap();
    }
}

/// The one-shot layout with a job of every step (`steps: [step1, step2, step3, step4]`) and an
/// external worker pod: one fleet serves the four steps (the worker stays from the first to the
/// last and exits once, when the job ends), and every file on the outputs volume equals a local
/// `evalfleet run` of the same job.
#[test]
fn oneshot_layout_runs_a_four_step_job_with_the_files_of_a_local_run() {
    let docs = load_manifests("oneshot");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (coord, args, job_path) = coordinator_pod(&docs, root);
    let (models, outputs) = (
        PathBuf::from(coord.host("/models")),
        PathBuf::from(coord.host("/outputs")),
    );
    stage_four_step_models(&models);
    std::fs::write(&job_path, four_step_job(&models, &outputs)).unwrap();

    let (coordinator, url) = start_coordinator(&coord, args);
    let pod = Pod::schedule(&docs, "evalfleet-worker", "evalfleet-worker-0-aaaaa", root);
    let worker = pod
        .command(worker_bin(), &worker_command_line(&docs, &pod, &url, true))
        .spawn()
        .expect("starting the worker pod");
    let worker = wait_ok(worker, Duration::from_secs(600), "the worker pod");
    wait_ok(coordinator, Duration::from_secs(120), "the coordinator pod");
    let worker_log = String::from_utf8_lossy(&worker.stderr);
    // The one worker pod loaded every step's models and was told to stop once, at the end.
    for loaded in ["embedding model loaded", "reward model loaded"] {
        assert!(worker_log.contains(loaded), "{loaded}:\n{worker_log}");
    }
    assert_eq!(worker_log.matches("stopping: ").count(), 1, "{worker_log}");

    // The same job run locally, outputs elsewhere.
    let local = root.join("local");
    let local_yaml = root.join("local.yaml");
    std::fs::write(&local_yaml, four_step_job(&models, &local)).unwrap();
    let run = std::process::Command::new(evalfleet_bin())
        .args([
            "run",
            local_yaml.to_str().unwrap(),
            "--workers",
            "1",
            "--cpu",
        ])
        .env("EVALFLEET_WORKER_BIN", worker_bin())
        .env_remove("EVALFLEET_TEST_CRASH_ONCE")
        .env_remove("EVALFLEET_TEST_HOLD_ONCE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ok(run, Duration::from_secs(600), "the local run");

    let (cluster, here) = (
        fleet_common::result_files(&outputs),
        fleet_common::result_files(&local),
    );
    let names = |files: &[(PathBuf, Vec<u8>)]| -> Vec<PathBuf> {
        files.iter().map(|(p, _)| p.clone()).collect()
    };
    assert_eq!(names(&cluster), names(&here), "the same files");
    for name in [
        "sft/generated_predictions.jsonl",
        "sft/sem_sim_distribution.json",
        "step3/mmlu/results.json",
        "CharacterEval/step4_eval_scores.json",
    ] {
        assert!(
            names(&cluster).contains(&PathBuf::from(name)),
            "{name} is written"
        );
    }
    for ((path, a), (_, b)) in cluster.iter().zip(&here) {
        assert!(a == b, "{} differs from the local run's", path.display());
    }
}

#!/usr/bin/env python3
"""Static checks of the deployment files, run by scripts/validate-deploy (inside its venv).

Each subcommand prints `ok ...` / `FAIL ...` / `WARN ...` lines and exits non-zero on any FAIL.
What "the code" offers is read from the Rust sources, so the checks follow the code:
  - environment variables: `env = "NAME"` (clap) and `env::var("NAME")` in
    services/<pkg>/src/**/*.rs, crates/chat-core/src/**/*.rs and crates/chat-service/src/**/*.rs
    (the flag groups both services flatten into their settings), plus the standard variables
    read by libraries (RUST_LOG by tracing-subscriber, OTEL_* by OpenTelemetry);
  - HTTP routes: `.at("/path"` (poem) and `path = "/path"` (poem-openapi);
  - default port: the `default_value` of the clap argument with `env = "HTTP_ADDR"`.
A service whose sources do not exist yet is checked against the documented contract instead
(with a WARN), so the check becomes strict as soon as the code lands.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BINARIES = ("chat-worker", "chat-ws-server")

# The documented contract (docs/DEPLOY.md, issue 4), used only while a service's code is absent.
DOCUMENTED_ENV = {
    "chat-worker": {
        "KAFKA_BROKERS", "KAFKA_TOPIC", "KAFKA_DLQ_TOPIC", "KAFKA_GROUP_ID", "DATABASE_URL",
        "KAFKA_FETCH_QUEUE_KBYTES",
        "DATABASE_MAX_CONNECTIONS", "REDIS_URL", "REDIS_PREFIX", "HTTP_ADDR", "BATCH_MAX_RECORDS", "PIPELINE_LANES",
        "BATCH_LINGER_MS", "RETRY_MAX_BACKOFF_MS", "LOG_FORMAT",
    },
    "chat-ws-server": {
        "KAFKA_BROKERS", "KAFKA_TOPIC", "DATABASE_URL", "DATABASE_MAX_CONNECTIONS", "REDIS_URL",
        "REDIS_PREFIX", "HTTP_ADDR", "HISTORY_DEFAULT_LIMIT", "HISTORY_MAX_LIMIT",
        "WS_MAX_SUBSCRIPTIONS", "WS_OUTBOUND_QUEUE_BYTES", "WS_MAX_FRAME_BYTES", "WS_PING_INTERVAL_SECS",
        "WS_IDLE_TIMEOUT_SECS", "SHUTDOWN_DRAIN_SECS", "LOG_FORMAT", "HISTORY_CACHE_MESSAGES",
        "CHANNEL_LINGER_SECS", "HISTORY_CACHE_WATCHED_CHANNELS",
    },
}
DOCUMENTED_PORT = {"chat-worker": 8081, "chat-ws-server": 8080}
DOCUMENTED_ROUTES = {"/healthz", "/readyz", "/metrics"}
# Read by libraries rather than by a clap argument.
STANDARD_ENV = {
    "RUST_LOG", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
}
# The worker finishes its batch and exits within this many seconds of SIGTERM.
WORKER_STOP_SECS = 10


class Report:
    def __init__(self, title: str):
        self.title = title
        self.failures = 0
        self.warnings = 0
        self.oks = 0

    def ok(self, msg: str) -> None:
        self.oks += 1
        print(f"  ok    {msg}")

    def fail(self, msg: str) -> None:
        self.failures += 1
        print(f"  FAIL  {msg}")

    def warn(self, msg: str) -> None:
        self.warnings += 1
        print(f"  WARN  {msg}")

    def check(self, cond: bool, msg: str) -> bool:
        (self.ok if cond else self.fail)(msg)
        return cond

    def done(self) -> int:
        print(f"  -> {self.title}: {self.oks} ok, {self.failures} failed, {self.warnings} warnings")
        return 1 if self.failures else 0


# ---------------------------------------------------------------------------------------------
# YAML loading with duplicate-key detection (Kubernetes rejects them; PyYAML keeps the last).

class StrictLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_docs(path: Path) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.load_all(f, Loader=StrictLoader) if d]


# ---------------------------------------------------------------------------------------------
# What the code offers.

def _rs_files(d: Path) -> list[Path]:
    return sorted(d.glob("src/**/*.rs")) if d.is_dir() else []


def service_dir(binary: str) -> Path | None:
    for cargo in sorted(ROOT.glob("services/*/Cargo.toml")):
        if re.search(rf'^name\s*=\s*"{re.escape(binary)}"', cargo.read_text(), re.M):
            return cargo.parent
    return None


class CodeContract:
    def __init__(self, binary: str):
        self.binary = binary
        self.dir = service_dir(binary)
        self.from_code = bool(self.dir and _rs_files(self.dir))
        if not self.from_code:
            self.env = DOCUMENTED_ENV[binary] | STANDARD_ENV
            self.prefixes = set()
            self.routes = set(DOCUMENTED_ROUTES)
            self.port = DOCUMENTED_PORT[binary]
            return
        texts = [p.read_text() for p in _rs_files(self.dir)]
        for shared in ("chat-core", "chat-service"):
            texts += [p.read_text() for p in _rs_files(ROOT / "crates" / shared)]
        code = "\n".join(texts)
        env = set(re.findall(r'\benv\s*=\s*"([A-Z][A-Z0-9_]*)"', code))
        env |= set(re.findall(r'env::var(?:_os)?\(\s*"([A-Z][A-Z0-9_]*)"', code))
        self.env = env | STANDARD_ENV
        # Families of variables read by prefix (the Kafka passthrough, KAFKA_CONFIG_<NAME>).
        self.prefixes = set(re.findall(r'ENV_PREFIX:\s*&str\s*=\s*"([A-Z][A-Z0-9_]*_)"', code))
        service_code = "\n".join(p.read_text() for p in _rs_files(self.dir))
        self.routes = set(re.findall(r'\.at\(\s*"(/[^"]*)"', service_code))
        self.routes |= set(re.findall(r'\bpath\s*=\s*"(/[^"]*)"', service_code))
        self.port = None
        # The internal listener (/healthz, /readyz, /metrics), when the service has one.
        self.internal_port = None
        for attr in re.findall(r"#\[arg\((?:[^()]|\([^()]*\))*\)\]", code, re.S):
            for var, field in (("HTTP_ADDR", "port"), ("INTERNAL_HTTP_ADDR", "internal_port")):
                if re.search(rf'env\s*=\s*"{var}"', attr):
                    m = re.search(r'default_value\s*=\s*"[^"]*:(\d+)"', attr)
                    if m:
                        setattr(self, field, int(m.group(1)))

    def unknown(self, names) -> list[str]:
        """The names the code reads neither by name nor by prefix."""
        return sorted(n for n in names if n not in self.env and not any(n.startswith(p) for p in self.prefixes))

    def describe(self) -> str:
        where = f"{self.dir.relative_to(ROOT)}/src" if self.from_code else "the documented contract (no code yet)"
        return f"{self.binary}: {len(self.env)} env vars, routes {sorted(self.routes)}, default port {self.port} from {where}"


_contracts: dict[str, CodeContract] = {}


def contract(binary: str) -> CodeContract:
    if binary not in _contracts:
        _contracts[binary] = CodeContract(binary)
    return _contracts[binary]


def announce_contracts(rep: Report) -> None:
    for b in BINARIES:
        c = contract(b)
        (rep.ok if c.from_code else rep.warn)(c.describe())
        if c.from_code and c.port is None:
            rep.warn(f"{b}: no default_value found for HTTP_ADDR in the code; using {DOCUMENTED_PORT[b]}")
            c.port = DOCUMENTED_PORT[b]


# ---------------------------------------------------------------------------------------------
# yaml-syntax: every YAML file parses, without duplicate keys.

def cmd_yaml_syntax(args) -> int:
    rep = Report("YAML syntax (parse, no duplicate keys)")
    for f in args.files:
        try:
            n = len(load_docs(Path(f)))
            rep.ok(f"{f}: {n} document(s)")
        except yaml.YAMLError as e:
            rep.fail(f"{f}: {e}".replace("\n", " "))
    return rep.done()


# ---------------------------------------------------------------------------------------------
# k8s-schema: every object against the Kubernetes OpenAPI-derived JSON schemas, offline
# (the schemas ship in the kubernetes-validate package), strict: unknown fields are errors.
# Kinds without a schema fail, except the CRD kinds listed in SKIP_KINDS (no CRD schema offline).

SKIP_KINDS = {
    "ServiceMonitor": "Prometheus Operator CRD: no schema offline",
    "PrometheusRule": "Prometheus Operator CRD: no schema offline; its rules go through promtool",
}


def cmd_k8s_schema(args) -> int:
    import kubernetes_validate as kv
    from kubernetes_validate import utils as kvu

    rep = Report(f"Kubernetes {args.kube_version} schemas (strict) for {', '.join(args.files)}")
    for f in args.files:
        for doc in load_docs(Path(f)):
            name = f"{f}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if doc.get("kind") in SKIP_KINDS:
                rep.warn(f"{name} skipped ({SKIP_KINDS[doc['kind']]})")
                continue
            try:
                kv.validate(doc, args.kube_version, strict=True)
                rep.ok(f"{name} ({doc.get('apiVersion')})")
            except kvu.SchemaNotFoundError as e:
                rep.fail(f"{name}: {e.message}")
            except kvu.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                rep.fail(f"{name}: {path}: {e.message}")
            except kvu.VersionNotSupportedError as e:
                rep.fail(e.message)
                return rep.done()
    return rep.done()


# ---------------------------------------------------------------------------------------------
# values-comments: every key of values.yaml is documented by a comment right above it, or
# lies inside a key documented with `# --` (helm-docs convention: the comment covers the subtree).

def cmd_values_comments(args) -> int:
    rep = Report("values.yaml: a comment on every key")
    lines = Path(args.values).read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented-subtree)
    undocumented = []
    comments: list[str] = []  # the comment block right above the current line
    for no, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append(stripped)
            continue
        m = re.match(r"^(\s*)(-\s+)?([A-Za-z0-9_.\-/\"']+):(\s|$)", line)
        if m:
            indent = len(m.group(1)) + (len(m.group(2)) if m.group(2) else 0)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            inherited = any(doc for _, doc in stack)
            documents_subtree = bool(comments) and comments[0].startswith("# --")
            is_parent = re.match(r"^\s*(-\s+)?[^:]+:\s*$", line) is not None
            if not (comments or inherited or is_parent):
                undocumented.append(f"line {no}: {stripped}")
            stack.append((indent, documents_subtree or inherited))
        if stripped:
            comments = []
    if undocumented:
        for u in undocumented:
            rep.fail(f"no comment for {u}")
    else:
        rep.ok(f"{args.values}: every leaf key is documented")
    return rep.done()


# ---------------------------------------------------------------------------------------------
# chart: consistency of a rendered scenario with the code.

def _labels_match(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _resolve_port(port, container: dict):
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def _container_env(container: dict, configmaps: dict, rep: Report, where: str) -> dict:
    env = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            name = src["configMapRef"]["name"]
            if name not in configmaps:
                rep.fail(f"{where}: envFrom ConfigMap {name!r} is not rendered")
                continue
            env.update({k: str(v) for k, v in (configmaps[name].get("data") or {}).items()})
        else:
            rep.fail(f"{where}: envFrom {list(src)} hides variable names from this check")
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", "<from " + ",".join(e.get("valueFrom", {})) + ">")
    return env


def _binary_of(container: dict) -> str | None:
    cmd = (container.get("command") or [None])[0]
    if cmd and Path(cmd).name in BINARIES:
        return Path(cmd).name
    return None


def cmd_chart(args) -> int:
    rep = Report(f"chart scenario {args.scenario}: probes, ports, env vs code")
    announce_contracts(rep)
    docs = load_docs(Path(args.rendered))
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    services = by_kind.get("Service", [])
    seen = set()

    for dep in by_kind.get("Deployment", []):
        name = dep["metadata"]["name"]
        app = dep["metadata"]["labels"].get("app.kubernetes.io/name")
        if app not in BINARIES:
            rep.fail(f"Deployment {name}: app.kubernetes.io/name {app!r} is not one of {BINARIES}")
            continue
        seen.add(app)
        c = contract(app)
        pod = dep["spec"]["template"]
        spec = pod["spec"]
        containers = spec["containers"]
        main = next((x for x in containers if x["name"] == app), None)
        if not rep.check(main is not None, f"{name}: has a container named {app}"):
            continue
        where = f"{name}/{app}"
        rep.check(_binary_of(main) == app, f"{where}: runs /usr/local/bin/{app} (command {main.get('command')})")
        http = _resolve_port("http", main)
        if not rep.check(http is not None, f"{where}: declares container port 'http'"):
            continue
        if args.defaults:
            rep.check(http == c.port, f"{where}: default container port {http} == the code's HTTP_ADDR default {c.port}")
        env = _container_env(main, configmaps, rep, where)
        addr = env.get("HTTP_ADDR", "")
        rep.check(addr.endswith(f":{http}"), f"{where}: HTTP_ADDR {addr!r} listens on container port {http}")
        # Probes go to the internal listener where the service has one, else to the http port.
        probe_port = http
        if c.internal_port is not None:
            probe_port = _resolve_port("internal", main)
            if rep.check(probe_port is not None, f"{where}: declares container port 'internal'"):
                iaddr = env.get("INTERNAL_HTTP_ADDR", "")
                rep.check(iaddr.endswith(f":{probe_port}"),
                          f"{where}: INTERNAL_HTTP_ADDR {iaddr!r} listens on container port {probe_port}")
                if args.defaults:
                    rep.check(probe_port == c.internal_port,
                              f"{where}: default internal port {probe_port} == the code's INTERNAL_HTTP_ADDR default {c.internal_port}")
        unknown = c.unknown(env)
        rep.check(not unknown, f"{where}: every env var is one the code reads" + (f" (unknown: {unknown})" if unknown else f" ({len(env)})"))
        # Helm reads YAML numbers as float64: a large integer rendered without `int64` comes out
        # as "1.048576e+06", which the binaries refuse at start (found on a real cluster).
        floaty = sorted(k for k, v in env.items() if re.fullmatch(r"[-+]?[0-9.]+e[-+]?[0-9]+", str(v)))
        rep.check(not floaty, f"{where}: no env value in float exponent notation" + (f" ({floaty})" if floaty else ""))
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
            p = main.get(probe)
            if not rep.check(bool(p and p.get("httpGet")), f"{where}: {probe} is an httpGet probe"):
                continue
            got_path, got_port = p["httpGet"].get("path"), _resolve_port(p["httpGet"].get("port"), main)
            rep.check(got_path == path and got_port == probe_port,
                      f"{where}: {probe} GET {got_path} on port {got_port} (want {path} on {probe_port})")
            rep.check(got_path in c.routes, f"{where}: {probe} path {got_path} is served by the code")
        sc = main.get("securityContext", {})
        psc = spec.get("securityContext", {})
        rep.check(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot")
        rep.check(sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
        rep.check(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation false")
        rep.check("checksum/config" in (pod["metadata"].get("annotations") or {}), f"{name}: pod has a checksum/config annotation")
        rep.check(bool(main.get("resources", {}).get("requests")), f"{where}: resource requests set")
        # Shutdown budget: preStop sleep + drain (ws-server) or batch time (worker) < grace period.
        pre = main.get("lifecycle", {}).get("preStop", {})
        sleep = pre.get("sleep", {}).get("seconds")
        if sleep is None and pre.get("exec"):
            cmd = pre["exec"]["command"]
            sleep = int(cmd[-1]) if cmd and cmd[0] == "sleep" else 0
        sleep = sleep or 0
        stop = int(env.get("SHUTDOWN_DRAIN_SECS", 0)) if app == "chat-ws-server" else WORKER_STOP_SECS
        grace = spec.get("terminationGracePeriodSeconds", 30)
        rep.check(grace > sleep + stop, f"{name}: terminationGracePeriodSeconds {grace} > preStop {sleep} s + shutdown {stop} s")
        # One Service selects these pods on the http port (the public one); where the service
        # has an internal listener, a second one targets only that port, and no Service mixes
        # the two (the public Service and the Ingress never expose probes and metrics).
        labels = pod["metadata"]["labels"]
        svcs = [s for s in services if _labels_match(s["spec"].get("selector", {}), labels)]
        want = 1 if c.internal_port is None else 2
        if rep.check(len(svcs) == want, f"{name}: {want} Service(s) select its pods ({[s['metadata']['name'] for s in svcs]})"):
            targeted = []
            for svc in svcs:
                rep.check(svc["metadata"]["labels"].get("app.kubernetes.io/name") == app, f"Service {svc['metadata']['name']}: app.kubernetes.io/name {app}")
                ports = {_resolve_port(sp.get("targetPort", sp["port"]), main) for sp in svc["spec"]["ports"]}
                rep.check(ports in ({http}, {probe_port}),
                          f"Service {svc['metadata']['name']}: targets container port(s) {sorted(ports)} (only {http}, or only the internal {probe_port})")
                targeted.append(frozenset(ports))
            rep.check(frozenset({http}) in targeted, f"{name}: a Service targets the http port {http}")

    rep.check(seen == set(BINARIES), f"both Deployments rendered ({sorted(seen)})")

    # The migration hook Job: chat-worker migrate, before install and upgrade.
    jobs = [j for j in by_kind.get("Job", []) if "migrate" in j["metadata"]["name"]]
    if rep.check(len(jobs) == 1, "one migration Job"):
        job = jobs[0]
        hooks = set((job["metadata"].get("annotations") or {}).get("helm.sh/hook", "").split(","))
        rep.check({"pre-install", "pre-upgrade"} <= hooks, f"migration Job is a pre-install,pre-upgrade hook ({sorted(hooks)})")
        ctr = job["spec"]["template"]["spec"]["containers"][0]
        rep.check(_binary_of(ctr) == "chat-worker" and ctr.get("args") == ["migrate"], f"migration Job runs `chat-worker migrate` ({ctr.get('command')} {ctr.get('args')})")
        env = _container_env(ctr, {}, rep, "migration Job")
        rep.check("DATABASE_URL" in env, "migration Job gets DATABASE_URL")
        unknown = contract("chat-worker").unknown(env)
        rep.check(not unknown, "migration Job: every env var is one chat-worker reads" + (f" (unknown: {unknown})" if unknown else ""))

    # helm test pods GET /readyz through a rendered Service port.
    svc_ports = {(s["metadata"]["name"], p["port"]) for s in services for p in s["spec"]["ports"]}
    for pod in by_kind.get("Pod", []):
        hook = (pod["metadata"].get("annotations") or {}).get("helm.sh/hook")
        urls = [a for c in pod["spec"]["containers"] for a in c.get("args", []) if a.startswith("http")]
        for url in urls:
            m = re.match(r"http://([^:/]+):(\d+)(/\S*)", url)
            ok = bool(m) and (m.group(1), int(m.group(2))) in svc_ports and m.group(3) == "/readyz"
            rep.check(hook == "test" and ok, f"test Pod {pod['metadata']['name']}: hook {hook!r} GET {url} hits a Service port and /readyz")

    # Every rendered kind is one this chart means to produce.
    expected = {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget", "Job", "Pod",
                "HorizontalPodAutoscaler", "Ingress", "ServiceMonitor", "PrometheusRule", "Secret"}
    for kind in sorted(set(by_kind) - expected):
        rep.fail(f"unexpected kind {kind}")
    for sec in by_kind.get("Secret", []):
        hooks = (sec["metadata"].get("annotations") or {}).get("helm.sh/hook", "")
        rep.check(args.dev_secret_allowed and "pre-install" in hooks,
                  f"Secret {sec['metadata']['name']} only as the dev-only hook (devSecret.create)")
    return rep.done()


# ---------------------------------------------------------------------------------------------
# compose: schema + consistency with the code.

def _validate_schema(instance, schema: dict, rep: Report, what: str) -> None:
    import jsonschema

    declared = str(schema.get("$schema", "")).rstrip("#")
    # compose-spec says ".../draft-07/schema" (no "#"), skaffold's schemas say nothing: both are draft 7.
    cls = (jsonschema.Draft7Validator if not declared or "draft-07" in declared
           else jsonschema.validators.validator_for(schema))
    cls.check_schema(schema)
    errors = sorted(cls(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    for e in errors[:20]:
        # An anyOf/oneOf failure says "not valid under any of the given schemas" about the whole
        # document: report the deepest sub-error instead, which names the offending key.
        while e.context:
            e = max(e.context, key=lambda sub: (len(sub.absolute_path), sub.validator == "additionalProperties"))
        msg = e.message if len(e.message) < 300 else e.message[:300] + "…"
        rep.fail(f"{what}: at /{'/'.join(map(str, e.absolute_path))}: {msg}")
    if not errors:
        rep.ok(f"{what}: valid against {schema.get('$id') or schema.get('title') or 'its schema'}")


def _compose_env(svc: dict) -> dict:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict((e.split("=", 1) + [""])[:2] for e in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def cmd_compose(args) -> int:
    rep = Report("docker-compose.yml: Compose schema, healthchecks, env and ports vs code")
    announce_contracts(rep)
    doc = load_docs(Path(args.file))[0]
    _validate_schema(doc, json.loads(Path(args.schema).read_text()), rep, args.file)
    services = doc.get("services", {})
    one_shot = {t for s in services.values() for t, d in (s.get("depends_on") or {}).items()
                if isinstance(d, dict) and d.get("condition") == "service_completed_successfully"}
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            rep.check(dep in services, f"{name}: depends_on {dep} exists")
            if isinstance(cond, dict) and cond.get("condition") == "service_healthy":
                rep.check("healthcheck" in services.get(dep, {}), f"{name}: depends_on {dep} service_healthy, and {dep} has a healthcheck")
        if name in one_shot:
            rep.check(str(svc.get("restart", "no")) == "no", f"{name}: one-shot (service_completed_successfully) with restart 'no'")
        else:
            hc = svc.get("healthcheck") or {}
            rep.check(bool(hc.get("test")) and not hc.get("disable"), f"{name}: server has a healthcheck")
        ep = svc.get("entrypoint") or []
        binary = Path(ep[0]).name if ep and Path(ep[0]).name in BINARIES else None
        if not binary:
            continue
        c = contract(binary)
        rep.check(str(svc.get("image", "")).split(":")[0] == "chat-stream" and svc.get("build") is not None,
                  f"{name}: image chat-stream built from the repository ({svc.get('image')}, build {svc.get('build')})")
        env = _compose_env(svc)
        unknown = c.unknown(env)
        rep.check(not unknown, f"{name} ({binary}): every env var is one the code reads" + (f" (unknown: {unknown})" if unknown else f" ({len(env)})"))
        if svc.get("command") == ["migrate"] or svc.get("command") == "migrate":
            rep.check(binary == "chat-worker" and "DATABASE_URL" in env, f"{name}: `chat-worker migrate` with DATABASE_URL")
            continue
        addr = env.get("HTTP_ADDR", f"0.0.0.0:{c.port}")
        port = int(addr.rsplit(":", 1)[1])
        health_port = port
        if c.internal_port is not None:
            iaddr = env.get("INTERNAL_HTTP_ADDR", f"0.0.0.0:{c.internal_port}")
            health_port = int(iaddr.rsplit(":", 1)[1])
        targets = set()
        for p in svc.get("ports", []):
            s = str(p["target"] if isinstance(p, dict) else p).split("/")[0]
            targets.add(int(s.rsplit(":", 1)[-1]))
        rep.check(targets == {port}, f"{name}: published container port(s) {sorted(targets)} == HTTP_ADDR port {port}")
        test = " ".join(map(str, (svc.get("healthcheck") or {}).get("test", [])))
        m = re.search(r"https?://[^:/\s]+:(\d+)(/\S*)", test)
        rep.check(bool(m) and int(m.group(1)) == health_port and m.group(2) in c.routes and m.group(2) in ("/readyz", "/healthz"),
                  f"{name}: healthcheck GETs {m.group(2) if m else '?'} on port {m.group(1) if m else '?'}, served by the code")
    return rep.done()


# ---------------------------------------------------------------------------------------------
# skaffold: schema of its apiVersion + references into the repository.

def _lookup(values: dict, dotted: str) -> bool:
    cur = values
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return False
        cur = cur[part]
    return True


def cmd_skaffold(args) -> int:
    rep = Report("skaffold.yaml: schema of its apiVersion, references")
    docs = load_docs(Path(args.file))
    rendered = [d for f in args.rendered for d in load_docs(Path(f))]
    services = {d["metadata"]["name"]: d for d in rendered if d.get("kind") == "Service"}
    artifacts = set()
    for i, doc in enumerate(docs):
        api = doc.get("apiVersion", "")
        m = re.fullmatch(r"skaffold/(v\w+)", api)
        if not rep.check(bool(m), f"config {i}: apiVersion {api!r}"):
            continue
        schema_file = Path(args.schema_dir) / f"{m.group(1)}.json"
        if not rep.check(schema_file.exists(), f"config {i}: schema {schema_file.name} exists for {api}"):
            continue
        _validate_schema(doc, json.loads(schema_file.read_text()), rep, f"{args.file} config {i} ({doc.get('metadata', {}).get('name')})")
        for a in (doc.get("build") or {}).get("artifacts", []):
            artifacts.add(a["image"])
            dockerfile = ROOT / a.get("context", ".") / (a.get("docker") or {}).get("dockerfile", "Dockerfile")
            if dockerfile.exists():
                rep.ok(f"artifact {a['image']}: {dockerfile.relative_to(ROOT)} exists")
            else:
                rep.warn(f"artifact {a['image']}: {dockerfile.relative_to(ROOT)} does not exist (yet)")
        for pattern in (doc.get("manifests") or {}).get("rawYaml", []):
            rep.check(bool(glob.glob(str(ROOT / pattern))), f"manifests.rawYaml {pattern} matches files")
        for rel in ((doc.get("deploy") or {}).get("helm") or {}).get("releases", []):
            chart = ROOT / rel["chartPath"]
            if not rep.check((chart / "Chart.yaml").exists(), f"release {rel['name']}: chartPath {rel['chartPath']} is a chart"):
                continue
            values = yaml.safe_load((chart / "values.yaml").read_text())
            for key in list(rel.get("setValueTemplates", {})) + list(rel.get("setValues", {})):
                rep.check(_lookup(values, key), f"release {rel['name']}: value {key} exists in values.yaml")
            for key, tpl in rel.get("setValueTemplates", {}).items():
                for var in re.findall(r"\{\{\s*\.(IMAGE_\w+)\s*\}\}", tpl):
                    image = re.sub(r"^IMAGE_(REPO|TAG|DIGEST|FULLY_QUALIFIED)_", "", var).replace("_", "-")
                    rep.check(image in artifacts, f"release {rel['name']}: {key} uses {var}, the built artifact {image}")
        for pf in doc.get("portForward", []):
            svc = services.get(pf.get("resourceName"))
            ports = {p["port"] for p in svc["spec"]["ports"]} if svc else set()
            rep.check(pf.get("resourceType") == "service" and pf.get("port") in ports,
                      f"portForward service/{pf.get('resourceName')}:{pf.get('port')} -> localhost:{pf.get('localPort')} exists in the rendered manifests")
    rep.check("chat-stream" in artifacts, f"builds the image chat-stream ({sorted(artifacts)})")
    return rep.done()


# ---------------------------------------------------------------------------------------------
# metric-names: every metric the chart's Grafana dashboard and PrometheusRule query is one the
# code exports. The exported names are read from the Rust sources: each service's
# `Registry::new("<prefix>")` and the register calls (`.counter("name", "help"[, &["label"]])`,
# `.gauge`, `.histogram` and their `_vec` forms, and closures wrapping them) in its src/, plus
# those of crates/chat-service types the service constructs (`ReadinessGauges::new`); test
# modules (from `#[cfg(test)]` on) do not count. A histogram `h` is queried as `h_bucket`
# (label `le`), `h_sum` and `h_count`, never as `h`.

REGISTER_KINDS = {"counter": "counter", "counter_vec": "counter", "gauge": "gauge",
                  "gauge_vec": "gauge", "histogram": "histogram", "histogram_vec": "histogram"}
# Labels Prometheus adds to every scraped series (ServiceMonitor / Kubernetes service discovery).
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "endpoint"}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                   "unless", "bool", "offset", "inf", "nan", "atan2"}
_STRING = r'"(?:[^"\\]|\\.)*"'


def _non_test(path: Path) -> str:
    return path.read_text().split("#[cfg(test)]", 1)[0]


def _registrations(code: str) -> list[tuple[int, str, str, set]]:
    """(offset, name, kind, labels) of every register call in `code`."""
    aliases = {m.group(1): REGISTER_KINDS[m.group(2)] for m in re.finditer(
        r"let\s+(\w+)\s*=\s*\|[^|]*\|\s*\w+\.(counter|counter_vec|gauge|gauge_vec|histogram|histogram_vec)\(", code)}
    found = []
    call = re.compile(r"(?:\.(\w+)|\b(\w+))\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"\s*,\s*" + _STRING
                      + r"\s*(?:,\s*&\[([^\]]*)\])?", re.S)
    for m in call.finditer(code):
        method, function, name, labels = m.groups()
        kind = REGISTER_KINDS.get(method) if method else aliases.get(function)
        if kind:
            found.append((m.start(), name, kind, set(re.findall(r'"([^"]+)"', labels or ""))))
    return found


def exported_metrics(rep: Report) -> dict[str, dict]:
    """Full metric name -> {"kind", "labels", "binary"} of every metric the services export."""
    shared: dict[str, list] = {}
    for path in _rs_files(ROOT / "crates" / "chat-service"):
        code = _non_test(path)
        for offset, name, kind, labels in _registrations(code):
            impls = re.findall(r"\bimpl(?:<[^>]*>)?\s+(\w+)", code[:offset])
            if not impls:
                rep.warn(f"{path.relative_to(ROOT)}: {name} is registered outside an impl block; not attributed")
                continue
            shared.setdefault(impls[-1], []).append((name, kind, labels))
    metrics: dict[str, dict] = {}
    for binary in BINARIES:
        d = service_dir(binary)
        if not d or not _rs_files(d):
            rep.fail(f"{binary}: no sources to read its metrics from")
            continue
        code = "\n".join(_non_test(p) for p in _rs_files(d))
        prefixes = set(re.findall(r'Registry::new\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"\s*\)', code))
        if len(prefixes) != 1:
            rep.fail(f"{binary}: expected one Registry::new(\"prefix\") in its sources, found {sorted(prefixes)}")
            continue
        prefix = prefixes.pop()
        regs = [(n, k, l) for _, n, k, l in _registrations(code)]
        for type_name, type_regs in shared.items():
            if re.search(rf"\b{type_name}::new\(", code):
                regs += type_regs
        for name, kind, labels in regs:
            metrics[f"{prefix}_{name}"] = {"kind": kind, "labels": labels, "binary": binary}
        rep.ok(f"{binary}: {len(regs)} metrics exported with prefix {prefix}_ "
               f"({sum(1 for _, k, _ in regs if k == 'histogram')} histograms)")
    return metrics


def promql_selectors(expr: str) -> list[tuple[str, set]]:
    """(metric name, label names matched) of every series selector in a PromQL expression."""
    text = re.sub(_STRING + r"|'(?:[^'\\]|\\.)*'|`[^`]*`", '""', expr)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    found = []
    for m in re.finditer(r"(?<![\w:$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^{}]*\})?(\s*\()?", text):
        name, matchers, call = m.groups()
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        labels = set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers or ""))
        found.append((name, labels))
    for m in re.finditer(r"(?<![\w:])\{([^{}]*)\}", text):  # {__name__="..."} selectors
        if "__name__" in m.group(1):
            found.append(("__name__", set()))
    return found


def check_expr(expr: str, where: str, metrics: dict, rep: Report) -> None:
    selectors = promql_selectors(expr)
    if not selectors:
        rep.fail(f"{where}: no metric found in {expr!r}")
        return
    for name, labels in selectors:
        if name == "__name__":
            rep.fail(f"{where}: a __name__ matcher cannot be checked against the code: {expr!r}")
            continue
        base, suffix = name, ""
        m = re.fullmatch(r"(.+)_(bucket|sum|count)", name)
        if name not in metrics and m and metrics.get(m.group(1), {}).get("kind") == "histogram":
            base, suffix = m.group(1), m.group(2)
        info = metrics.get(base)
        if info is None:
            rep.fail(f"{where}: {name} is not exported by the code (no register call with that name)")
            continue
        if info["kind"] == "histogram" and not suffix:
            rep.fail(f"{where}: {name} is a histogram: query {name}_bucket, _sum or _count")
            continue
        allowed = info["labels"] | TARGET_LABELS | ({"le"} if suffix == "bucket" else set())
        unknown = sorted(labels - allowed)
        if unknown:
            rep.fail(f"{where}: {name} has no label {', '.join(unknown)} (it has {sorted(info['labels'])})")
            continue
        rep.ok(f"{where}: {name}")


def _template_query(q) -> str | None:
    """The PromQL of a Grafana query variable (label_values(<selector>, label) or an expression)."""
    if isinstance(q, dict):
        q = q.get("query")
    if not isinstance(q, str) or not q.strip():
        return None
    m = re.fullmatch(r"\s*label_values\(\s*(.+),\s*\w+\s*\)\s*", q, re.S)
    if m:
        return m.group(1)
    m = re.fullmatch(r"\s*(?:query_result|metrics)\((.*)\)\s*", q, re.S)
    return m.group(1) if m else q


def check_dashboard(dashboard: dict, where: str, metrics: dict, rep: Report) -> int:
    n = 0

    def walk(panels):
        nonlocal n
        for panel in panels or []:
            for target in panel.get("targets") or []:
                expr = target.get("expr")
                if expr:
                    n += 1
                    check_expr(expr, f"{where}: panel {panel.get('title')!r} {target.get('refId')}", metrics, rep)
            walk(panel.get("panels"))

    walk(dashboard.get("panels"))
    for var in (dashboard.get("templating") or {}).get("list") or []:
        if var.get("type") == "query":
            expr = _template_query(var.get("query"))
            if expr:
                n += 1
                check_expr(expr, f"{where}: variable ${var.get('name')}", metrics, rep)
    return n


def _rendered_monitoring(files) -> tuple[list, list]:
    """(dashboards as (where, json), rule groups as (where, group)) in rendered manifests."""
    dashboards, groups = [], []
    for f in files:
        for doc in load_docs(Path(f)):
            name = f"{Path(f).name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if doc.get("kind") == "ConfigMap":
                for key, value in (doc.get("data") or {}).items():
                    if key.endswith(".json"):
                        dashboards.append((f"{name} {key}", json.loads(value)))
            elif doc.get("kind") == "PrometheusRule":
                for group in (doc.get("spec") or {}).get("groups") or []:
                    groups.append((name, group))
    return dashboards, groups


def cmd_metric_names(args) -> int:
    rep = Report("dashboard and alert metrics vs the code")
    metrics = exported_metrics(rep)
    if rep.failures:
        return rep.done()
    dashboards, groups = _rendered_monitoring(args.rendered)
    for f in args.dashboard:
        dashboards.append((f, json.loads(Path(f).read_text())))
    if args.require and not (dashboards and groups):
        rep.fail(f"expected a dashboard ConfigMap and a PrometheusRule in {args.rendered}; "
                 f"found {len(dashboards)} dashboards, {len(groups)} rule groups")
    for where, dashboard in dashboards:
        n = check_dashboard(dashboard, where, metrics, rep)
        rep.check(n > 0, f"{where}: {n} queries checked")
    for where, group in groups:
        for rule in group.get("rules") or []:
            label = rule.get("alert") or rule.get("record")
            check_expr(str(rule.get("expr", "")), f"{where}: {group.get('name')}/{label}", metrics, rep)
    return rep.done()


def cmd_extract_rules(args) -> int:
    """Writes the rule groups of the PrometheusRules in the rendered manifests as a Prometheus
    rule file (for promtool)."""
    _, groups = _rendered_monitoring([args.rendered])
    if not groups:
        print(f"  FAIL  no PrometheusRule in {args.rendered}")
        return 1
    Path(args.out).write_text(yaml.safe_dump({"groups": [g for _, g in groups]}, sort_keys=False, width=200))
    print(f"  ok    {len(groups)} rule groups, {sum(len(g.get('rules') or []) for _, g in groups)} rules -> {args.out}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("yaml-syntax"); p.add_argument("files", nargs="+"); p.set_defaults(fn=cmd_yaml_syntax)
    p = sub.add_parser("k8s-schema"); p.add_argument("files", nargs="+"); p.add_argument("--kube-version", required=True)
    p.set_defaults(fn=cmd_k8s_schema)
    p = sub.add_parser("values-comments"); p.add_argument("values"); p.set_defaults(fn=cmd_values_comments)
    p = sub.add_parser("chart"); p.add_argument("rendered"); p.add_argument("--scenario", required=True)
    p.add_argument("--defaults", action="store_true", help="the scenario keeps the default ports")
    p.add_argument("--dev-secret-allowed", action="store_true"); p.set_defaults(fn=cmd_chart)
    p = sub.add_parser("compose"); p.add_argument("file"); p.add_argument("--schema", required=True); p.set_defaults(fn=cmd_compose)
    p = sub.add_parser("skaffold"); p.add_argument("file"); p.add_argument("--schema-dir", required=True)
    p.add_argument("--rendered", nargs="+", default=[]); p.set_defaults(fn=cmd_skaffold)
    p = sub.add_parser("metric-names"); p.add_argument("rendered", nargs="*", default=[])
    p.add_argument("--dashboard", action="append", default=[], help="a dashboard JSON file to check too")
    p.add_argument("--require", action="store_true", help="fail unless the rendered files hold a dashboard and rules")
    p.set_defaults(fn=cmd_metric_names)
    p = sub.add_parser("extract-rules"); p.add_argument("rendered"); p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_extract_rules)
    args = ap.parse_args()
    try:
        return args.fn(args)
    except (yaml.YAMLError, OSError, KeyError, TypeError, ValueError) as e:
        print(f"  FAIL  {args.cmd}: {type(e).__name__}: {e}".replace("\n", " "))
        return 1


if __name__ == "__main__":
    sys.exit(main())

{{/*
Naming. One name per deployable everywhere: `chat-worker` and `chat-ws-server` are the binaries,
the `app.kubernetes.io/name` labels and (for a release named like the chart) the resource names.
*/}}

{{- define "chat-stream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every resource name; empty for a release named like the chart. */}}
{{- define "chat-stream.prefix" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if ne .Release.Name (include "chat-stream.name" .) -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Name of the release's shared objects (ServiceAccount, dev Secret, tests): `chat-stream` or `<prefix>-chat-stream`. */}}
{{- define "chat-stream.fullname" -}}
{{- $prefix := include "chat-stream.prefix" . -}}
{{- if $prefix -}}{{ printf "%s-%s" $prefix (include "chat-stream.name" .) | trunc 63 | trimSuffix "-" }}{{- else -}}{{ include "chat-stream.name" . }}{{- end -}}
{{- end -}}

{{/* Resource name of a component. Call with (dict "root" $ "component" "chat-worker"). */}}
{{- define "chat-stream.componentFullname" -}}
{{- $prefix := include "chat-stream.prefix" .root -}}
{{- if $prefix -}}{{ printf "%s-%s" $prefix .component | trunc 63 | trimSuffix "-" }}{{- else -}}{{ .component }}{{- end -}}
{{- end -}}

{{- define "chat-stream.worker.fullname" -}}
{{- include "chat-stream.componentFullname" (dict "root" . "component" "chat-worker") -}}
{{- end -}}

{{- define "chat-stream.wsServer.fullname" -}}
{{- include "chat-stream.componentFullname" (dict "root" . "component" "chat-ws-server") -}}
{{- end -}}

{{- define "chat-stream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "chat-stream.commonLabels" -}}
helm.sh/chart: {{ include "chat-stream.chart" . }}
app.kubernetes.io/part-of: chat-stream
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of a component's objects. Call with (dict "root" $ "component" "chat-worker"). */}}
{{- define "chat-stream.componentLabels" -}}
{{ include "chat-stream.commonLabels" .root }}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/component: {{ .component | trimPrefix "chat-" }}
{{- end -}}

{{/* Selector labels of a component (immutable on Deployments: keep them few and stable). */}}
{{- define "chat-stream.selectorLabels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "chat-stream.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "chat-stream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "chat-stream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret holding DATABASE_URL and REDIS_URL; fails the render when there is none. */}}
{{- define "chat-stream.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else if .Values.devSecret.create -}}
{{- printf "%s-dev-secret" (include "chat-stream.fullname" .) -}}
{{- else -}}
{{- fail "secrets.existingSecret is required: name a Secret with DATABASE_URL and REDIS_URL (or set devSecret.create=true for development)" -}}
{{- end -}}
{{- end -}}

{{/* DATABASE_URL from the referenced Secret. */}}
{{- define "chat-stream.databaseUrlEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "chat-stream.secretName" . }}
      key: {{ .Values.secrets.databaseUrlKey }}
{{- end -}}

{{/* The secret environment variables, from the referenced Secrets: the URLs, the Kafka
passthrough properties held in Secrets, the OTLP headers; then the TLS file settings. */}}
{{- define "chat-stream.secretEnv" -}}
{{ include "chat-stream.databaseUrlEnv" . }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "chat-stream.secretName" . }}
      key: {{ .Values.secrets.redisUrlKey }}
{{- range .Values.config.kafka.secretProperties }}
- name: {{ include "chat-stream.kafkaConfigVar" .property }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end }}
{{- with .Values.config.otel.headers }}
{{- if .secret }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- include "chat-stream.tlsEnv" . }}
{{- end -}}

{{/* The variable of a librdkafka property: `sasl.password` → KAFKA_CONFIG_SASL_PASSWORD
(`_` is written `__`, `-` is written `___`). */}}
{{- define "chat-stream.kafkaConfigVar" -}}
KAFKA_CONFIG_{{ . | replace "_" "__" | replace "-" "___" | replace "." "_" | upper }}
{{- end -}}

{{/* Per backing service: the settings naming its CA bundle, client certificate and key. */}}
{{- define "chat-stream.tlsTable" -}}
postgres: [DATABASE_CA_FILE, DATABASE_CLIENT_CERT_FILE, DATABASE_CLIENT_KEY_FILE]
redis: [REDIS_CA_FILE, REDIS_CLIENT_CERT_FILE, REDIS_CLIENT_KEY_FILE]
kafka: [KAFKA_CONFIG_SSL_CA_LOCATION, KAFKA_CONFIG_SSL_CERTIFICATE_LOCATION, KAFKA_CONFIG_SSL_KEY_LOCATION]
otel: [OTEL_EXPORTER_OTLP_CERTIFICATE, OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE, OTEL_EXPORTER_OTLP_CLIENT_KEY]
{{- end -}}

{{/* Environment pointing at the mounted TLS files. */}}
{{- define "chat-stream.tlsEnv" -}}
{{- range $service, $vars := include "chat-stream.tlsTable" . | fromYaml }}
{{- $tls := index $.Values.tls $service }}
{{- if or $tls.ca.configMap $tls.ca.secret }}
- name: {{ index $vars 0 }}
  value: /etc/chat-stream/tls/{{ $service }}-ca/{{ $tls.ca.key | default "ca.pem" }}
{{- end }}
{{- if $tls.clientCert.secret }}
- name: {{ index $vars 1 }}
  value: /etc/chat-stream/tls/{{ $service }}-client/{{ $tls.clientCert.certKey | default "tls.crt" }}
- name: {{ index $vars 2 }}
  value: /etc/chat-stream/tls/{{ $service }}-client/{{ $tls.clientCert.keyKey | default "tls.key" }}
{{- end }}
{{- end }}
{{- end -}}

{{/* volumeMounts of the TLS files. */}}
{{- define "chat-stream.tlsMounts" -}}
{{- range $service, $_ := include "chat-stream.tlsTable" . | fromYaml }}
{{- $tls := index $.Values.tls $service }}
{{- if or $tls.ca.configMap $tls.ca.secret }}
- name: tls-{{ $service }}-ca
  mountPath: /etc/chat-stream/tls/{{ $service }}-ca
  readOnly: true
{{- end }}
{{- if $tls.clientCert.secret }}
- name: tls-{{ $service }}-client
  mountPath: /etc/chat-stream/tls/{{ $service }}-client
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* volumes of the TLS files: each CA from its ConfigMap or Secret, each client certificate
from its Secret. */}}
{{- define "chat-stream.tlsVolumes" -}}
{{- range $service, $_ := include "chat-stream.tlsTable" . | fromYaml }}
{{- $tls := index $.Values.tls $service }}
{{- with $tls.ca }}
{{- $key := .key | default "ca.pem" }}
{{- if .configMap }}
- name: tls-{{ $service }}-ca
  configMap:
    name: {{ .configMap }}
    items:
      - key: {{ $key }}
        path: {{ $key }}
{{- else if .secret }}
- name: tls-{{ $service }}-ca
  secret:
    secretName: {{ .secret }}
    items:
      - key: {{ $key }}
        path: {{ $key }}
{{- end }}
{{- end }}
{{- with $tls.clientCert }}
{{- if .secret }}
- name: tls-{{ $service }}-client
  secret:
    secretName: {{ .secret }}
    items:
      - key: {{ .certKey | default "tls.crt" }}
        path: {{ .certKey | default "tls.crt" }}
      - key: {{ .keyKey | default "tls.key" }}
        path: {{ .keyKey | default "tls.key" }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Environment shared by both components (ConfigMap data). */}}
{{- define "chat-stream.sharedConfig" -}}
KAFKA_BROKERS: {{ .Values.config.kafka.brokers | quote }}
KAFKA_TOPIC: {{ .Values.config.kafka.topic | quote }}
REDIS_PREFIX: {{ .Values.config.redisPrefix | quote }}
LOG_FORMAT: {{ .Values.config.logFormat | quote }}
RUST_LOG: {{ .Values.config.rustLog | quote }}
{{- with .Values.config.otel.endpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
{{- range $property, $value := .Values.config.kafka.properties }}
{{- /* YAML numbers arrive as floats: 52428800 would render as 5.24288e+07. */}}
{{- if and (kindIs "float64" $value) (eq $value (float64 (int64 $value))) }}
{{- $value = int64 $value }}
{{- end }}
{{ include "chat-stream.kafkaConfigVar" $property }}: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* ConfigMap data of the worker; also hashed into the pod's checksum/config annotation. */}}
{{- define "chat-stream.worker.configData" -}}
{{ include "chat-stream.sharedConfig" . }}
KAFKA_DLQ_TOPIC: {{ .Values.worker.config.dlqTopic | quote }}
KAFKA_GROUP_ID: {{ .Values.worker.config.groupId | quote }}
KAFKA_FETCH_QUEUE_KBYTES: {{ .Values.worker.config.fetchQueueKbytes | quote }}
DATABASE_MAX_CONNECTIONS: {{ .Values.worker.config.databaseMaxConnections | quote }}
HTTP_ADDR: {{ printf "0.0.0.0:%v" .Values.worker.port | quote }}
BATCH_MAX_RECORDS: {{ .Values.worker.config.batchMaxRecords | quote }}
PIPELINE_LANES: {{ .Values.worker.config.pipelineLanes | quote }}
BATCH_LINGER_MS: {{ .Values.worker.config.batchLingerMs | quote }}
RETRY_MAX_BACKOFF_MS: {{ .Values.worker.config.retryMaxBackoffMs | quote }}
OTEL_SERVICE_NAME: {{ .Values.worker.config.otelServiceName | quote }}
{{- end -}}

{{- define "chat-stream.wsServer.configData" -}}
{{ include "chat-stream.sharedConfig" . }}
DATABASE_MAX_CONNECTIONS: {{ .Values.wsServer.config.databaseMaxConnections | quote }}
HTTP_ADDR: {{ printf "0.0.0.0:%v" .Values.wsServer.port | quote }}
INTERNAL_HTTP_ADDR: {{ printf "0.0.0.0:%v" .Values.wsServer.internalPort | quote }}
HISTORY_DEFAULT_LIMIT: {{ .Values.wsServer.config.historyDefaultLimit | quote }}
HISTORY_MAX_LIMIT: {{ .Values.wsServer.config.historyMaxLimit | quote }}
HISTORY_CACHE_MESSAGES: {{ .Values.wsServer.config.historyCacheMessages | quote }}
CHANNEL_LINGER_SECS: {{ .Values.wsServer.config.channelLingerSecs | quote }}
HISTORY_CACHE_WATCHED_CHANNELS: {{ .Values.wsServer.config.historyCacheWatchedChannels | quote }}
WS_MAX_SUBSCRIPTIONS: {{ .Values.wsServer.config.maxSubscriptions | quote }}
WS_OUTBOUND_QUEUE_BYTES: {{ .Values.wsServer.config.outboundQueueBytes | int64 | quote }}
WS_WRITE_TIMEOUT_SECS: {{ .Values.wsServer.config.writeTimeoutSecs | quote }}
WS_PUBLISH_RATE: {{ .Values.wsServer.config.publishRate | quote }}
WS_PUBLISH_BURST: {{ .Values.wsServer.config.publishBurst | quote }}
WS_COMMAND_RATE: {{ .Values.wsServer.config.commandRate | quote }}
WS_COMMAND_BURST: {{ .Values.wsServer.config.commandBurst | quote }}
WS_RATE_LIMIT_STRIKES: {{ .Values.wsServer.config.rateLimitStrikes | quote }}
WS_PUBLISHES_IN_FLIGHT: {{ .Values.wsServer.config.publishesInFlight | quote }}
HUB_MAX_CHANNELS: {{ .Values.wsServer.config.hubMaxChannels | quote }}
KAFKA_PRODUCER_QUEUE_KBYTES: {{ .Values.wsServer.config.kafkaProducerQueueKbytes | quote }}
WS_MAX_FRAME_BYTES: {{ .Values.wsServer.config.maxFrameBytes | quote }}
WS_PING_INTERVAL_SECS: {{ .Values.wsServer.config.pingIntervalSecs | quote }}
WS_IDLE_TIMEOUT_SECS: {{ .Values.wsServer.config.idleTimeoutSecs | quote }}
SHUTDOWN_DRAIN_SECS: {{ .Values.wsServer.config.shutdownDrainSecs | quote }}
OTEL_SERVICE_NAME: {{ .Values.wsServer.config.otelServiceName | quote }}
{{- with .Values.wsServer.auth }}
AUTH_MODE: {{ .mode | quote }}
{{- if .jwtSecret.existingSecret }}
AUTH_JWT_SECRET_FILE: {{ printf "/run/secrets/chat-auth/%s" .jwtSecret.key | quote }}
{{- end }}
{{- with .publicKey }}
AUTH_JWT_PUBLIC_KEY: {{ . | quote }}
{{- end }}
{{- with .jwksUrl }}
AUTH_JWKS_URL: {{ . | quote }}
{{- end }}
{{- with .issuer }}
AUTH_ISSUER: {{ . | quote }}
{{- end }}
{{- with .audience }}
AUTH_AUDIENCE: {{ . | quote }}
{{- end }}
AUTH_RIGHTS_CLAIM: {{ .rightsClaim | quote }}
AUTH_DEFAULT_RIGHTS: {{ .defaultRights | quote }}
AUTH_LEEWAY_SECS: {{ .leewaySecs | quote }}
AUTH_DEV_TOKENS: {{ .devTokens | quote }}
WS_ALLOWED_ORIGINS: {{ .allowedOrigins | quote }}
CORS_ALLOWED_ORIGINS: {{ .corsAllowedOrigins | quote }}
{{- end }}
{{- with .Values.wsServer.admission }}
HTTP_HEADER_TIMEOUT_SECS: {{ .headerTimeoutSecs | quote }}
HTTP_KEEP_ALIVE_TIMEOUT_SECS: {{ .keepAliveTimeoutSecs | quote }}
HTTP_MAX_BODY_BYTES: {{ .maxBodyBytes | quote }}
WS_MAX_CONNECTIONS: {{ .maxConnections | quote }}
WS_MAX_CONNECTIONS_PER_IP: {{ .maxConnectionsPerIp | quote }}
WS_CONNECTS_PER_IP_PER_SEC: {{ .connectsPerIpPerSec | quote }}
WS_CONNECT_BURST_PER_IP: {{ .connectBurstPerIp | quote }}
WS_ABUSE_COOLDOWN_SECS: {{ .abuseCooldownSecs | quote }}
CLIENT_READS_PER_SEC: {{ .clientReadsPerSec | quote }}
CLIENT_READ_BURST: {{ .clientReadBurst | quote }}
CLIENT_WRITES_PER_SEC: {{ .clientWritesPerSec | quote }}
CLIENT_WRITE_BURST: {{ .clientWriteBurst | quote }}
{{- end }}
TRUSTED_PROXIES: {{ include "chat-stream.wsServer.trustedProxies" . | quote }}
{{- end -}}

{{/*
Proxies whose X-Forwarded-For the ws-server believes: the value given; else, with the Ingress
enabled, the private ranges its controller's pods live in (every client would otherwise count
as the controller's address against the per-IP limits); else none.
*/}}
{{- define "chat-stream.wsServer.trustedProxies" -}}
{{- if .Values.wsServer.admission.trustedProxies -}}
{{ .Values.wsServer.admission.trustedProxies }}
{{- else if .Values.wsServer.ingress.enabled -}}
10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7
{{- end -}}
{{- end -}}

{{/*
preStop hook that sleeps. The native `sleep` action (Kubernetes >= 1.30) needs nothing in the image;
older clusters get `exec sleep`, which needs /bin/sleep in the image.
*/}}
{{- define "chat-stream.preStop" -}}
{{- $seconds := int .seconds -}}
{{- if gt $seconds 0 -}}
lifecycle:
  preStop:
    {{- if semverCompare ">=1.30-0" .root.Capabilities.KubeVersion.Version }}
    sleep:
      seconds: {{ $seconds }}
    {{- else }}
    exec:
      command: ["sleep", "{{ $seconds }}"]
    {{- end }}
{{- end }}
{{- end -}}

{{/* Topology spread constraints with the component's selector filled in when missing. */}}
{{- define "chat-stream.topologySpread" -}}
{{- $out := list -}}
{{- range .constraints -}}
{{- $c := deepCopy . -}}
{{- if not (hasKey $c "labelSelector") -}}
{{- $_ := set $c "labelSelector" (dict "matchLabels" (include "chat-stream.selectorLabels" (dict "root" $.root "component" $.component) | fromYaml)) -}}
{{- end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Checks that cannot be expressed in values.schema.json. */}}
{{- define "chat-stream.validate" -}}
{{- $ws := .Values.wsServer -}}
{{- if and $ws.enabled (le (int $ws.terminationGracePeriodSeconds) (add (int $ws.preStopSleepSeconds) (int $ws.config.shutdownDrainSecs))) -}}
{{- fail (printf "wsServer.terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds (%v) + config.shutdownDrainSecs (%v)" $ws.terminationGracePeriodSeconds $ws.preStopSleepSeconds $ws.config.shutdownDrainSecs) -}}
{{- end -}}
{{- $w := .Values.worker -}}
{{- if and $w.enabled (le (int $w.terminationGracePeriodSeconds) (add (int $w.preStopSleepSeconds) 10)) -}}
{{- fail (printf "worker.terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds (%v) + 10 s to finish a batch" $w.terminationGracePeriodSeconds $w.preStopSleepSeconds) -}}
{{- end -}}
{{- if and .Values.secrets.existingSecret .Values.devSecret.create -}}
{{- fail "set either secrets.existingSecret or devSecret.create, not both" -}}
{{- end -}}
{{- $auth := .Values.wsServer.auth -}}
{{- if and $ws.enabled (eq $auth.mode "jwt") (not (or $auth.jwtSecret.existingSecret $auth.publicKey $auth.jwksUrl)) -}}
{{- fail "wsServer.auth.mode=jwt needs a key: wsServer.auth.jwtSecret.existingSecret, wsServer.auth.publicKey or wsServer.auth.jwksUrl (or mode=anonymous, documented as unsafe)" -}}
{{- end -}}
{{- if and $auth.devTokens (not $auth.jwtSecret.existingSecret) -}}
{{- fail "wsServer.auth.devTokens needs wsServer.auth.jwtSecret.existingSecret (development tokens are HS256)" -}}
{{- end -}}
{{- end -}}

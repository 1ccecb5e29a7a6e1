{{/*
Names, labels and the repeated blocks of the tf-serving chart.
*/}}

{{/* The chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "tf-serving.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of every object: `<release>-<chart>`, or the release name alone when it
already contains the chart name.
*/}}
{{- define "tf-serving.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The models ConfigMap (`tfcluster deploy promote` edits its models.config). */}}
{{- define "tf-serving.modelsConfigMapName" -}}
{{- printf "%s-models" (include "tf-serving.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The ConfigMap with batching.config and monitoring.config. */}}
{{- define "tf-serving.serverConfigMapName" -}}
{{- printf "%s-config" (include "tf-serving.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tf-serving.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "tf-serving.labels" -}}
helm.sh/chart: {{ include "tf-serving.chart" . }}
{{ include "tf-serving.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: model-server
app.kubernetes.io/part-of: tfcluster
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the server pods (never change them on upgrade: selectors are immutable). */}}
{{- define "tf-serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tf-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tf-serving.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tf-serving.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The server image; GPU serving uses the `-gpu` variant of the same release. */}}
{{- define "tf-serving.image" -}}
{{- $tag := toString (default .Chart.AppVersion .Values.image.tag) }}
{{- if .Values.gpu.enabled }}
{{- $tag = printf "%s%s" $tag .Values.gpu.tagSuffix }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* Where model `name` is read from: a folder on the PVC or a bucket prefix. */}}
{{- define "tf-serving.modelBasePath" -}}
{{- $root := .root }}
{{- if .model.basePath }}
{{- .model.basePath }}
{{- else if and (eq $root.Values.modelStorage.type "bucket") (not $root.Values.modelStorage.bucket.sync.enabled) }}
{{- printf "%s/%s" (trimSuffix "/" $root.Values.modelStorage.bucket.uri) .model.name }}
{{- else }}
{{- printf "%s/%s" (trimSuffix "/" $root.Values.modelStorage.mountPath) .model.name }}
{{- end }}
{{- end }}

{{/* The model whose status gates readiness. */}}
{{- define "tf-serving.probeModel" -}}
{{- default (first .Values.models).name .Values.probeModel }}
{{- end }}

{{/*
models.config: a ModelServerConfig text proto (tensorflow_serving/config/model_server_config.proto).
TF Serving re-reads it every modelConfig.pollWaitSeconds.
*/}}
{{- define "tf-serving.modelsConfig" -}}
model_config_list {
{{- range .Values.models }}
  config {
    name: {{ .name | quote }}
    base_path: {{ include "tf-serving.modelBasePath" (dict "root" $ "model" .) | quote }}
    model_platform: "tensorflow"
    {{- $policy := default "latest" .versionPolicy }}
    {{- if eq $policy "all" }}
    model_version_policy { all {} }
    {{- else if eq $policy "specific" }}
    model_version_policy { specific { {{- range .versions }} versions: {{ int . }}{{ end }} } }
    {{- else }}
    model_version_policy { latest { num_versions: {{ int (default 1 .latestVersions) }} } }
    {{- end }}
    {{- range $label, $version := (default dict .versionLabels) }}
    version_labels { key: {{ $label | quote }} value: {{ int $version }} }
    {{- end }}
  }
{{- end }}
}
{{- end }}

{{/* batching.config: a BatchingParameters text proto. */}}
{{- define "tf-serving.batchingConfig" -}}
{{- with .Values.batching -}}
max_batch_size { value: {{ int .maxBatchSize }} }
batch_timeout_micros { value: {{ int .batchTimeoutMicros }} }
max_enqueued_batches { value: {{ int .maxEnqueuedBatches }} }
num_batch_threads { value: {{ int .numBatchThreads }} }
{{- range .allowedBatchSizes }}
allowed_batch_sizes: {{ int . }}
{{- end }}
pad_variable_length_inputs: {{ .padVariableLengthInputs }}
{{- end }}
{{- end }}

{{/* monitoring.config: a MonitoringConfig text proto. */}}
{{- define "tf-serving.monitoringConfig" -}}
prometheus_config {
  enable: {{ .Values.monitoring.enabled }}
  path: {{ .Values.monitoring.path | quote }}
}
{{- end }}

{{/*
The request behind readiness and startup: TF Serving's REST model status. It answers 200
once the model is managed by the server (the REST port opens after the initial load),
404 for a model the server does not know, unlike a TCP check that passes on an empty server.
*/}}
{{- define "tf-serving.modelStatusProbe" -}}
httpGet:
  path: /v1/models/{{ include "tf-serving.probeModel" . }}
  port: rest
  scheme: HTTP
{{- end }}

{{/* Whether TF Serving reads a folder that `tfcluster sync-models` fills from the bucket. */}}
{{- define "tf-serving.bucketSync" -}}
{{- if and (eq .Values.modelStorage.type "bucket") .Values.modelStorage.bucket.sync.enabled }}true{{ end }}
{{- end }}

{{/*
Environment of the sync containers: the standard AWS variables that boto3, the AWS CLI and
tfcluster's storage read (AWS_ENDPOINT_URL for MinIO and other S3-compatible stores), or
GOOGLE_APPLICATION_CREDENTIALS for gs://; credentials from the Secret, else workload identity.
*/}}
{{- define "tf-serving.syncEnv" -}}
{{- $storage := .Values.modelStorage }}
{{- if hasPrefix "gs://" $storage.bucket.uri }}
{{- if $storage.bucket.credentialsSecret }}
- name: GOOGLE_APPLICATION_CREDENTIALS
  value: /var/secrets/bucket/{{ $storage.bucket.gcs.keyFile }}
{{- end }}
{{- else }}
- name: AWS_REGION
  value: {{ $storage.bucket.s3.region | quote }}
{{- with $storage.bucket.s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ if contains "://" . }}{{ . | quote }}{{ else }}{{ printf "%s://%s" (ternary "https" "http" $storage.bucket.s3.useHttps) . | quote }}{{ end }}
{{- end }}
{{- with $storage.bucket.credentialsSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- end }}
{{- end }}

{{/* One sync container: `--once` as the init container, a loop as the sidecar. */}}
{{- define "tf-serving.syncContainer" -}}
{{- $root := .root }}
{{- $storage := $root.Values.modelStorage }}
{{- $sync := $storage.bucket.sync }}
- name: {{ .name }}
  image: {{ printf "%s:%s" $sync.image.repository $sync.image.tag }}
  imagePullPolicy: {{ $sync.image.pullPolicy }}
  command:
    - tfcluster
  args:
    - sync-models
    - {{ $storage.bucket.uri | quote }}
    - {{ $storage.mountPath | quote }}
    {{- $names := list }}
    {{- range $root.Values.models }}
    {{- $names = append $names .name }}
    {{- end }}
    - --models={{ join "," $names }}
    {{- if .once }}
    - --once
    {{- else }}
    - --interval={{ int $sync.intervalSeconds }}
    {{- end }}
  {{- with include "tf-serving.syncEnv" $root | trim }}
  env:
    {{- . | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml $sync.resources | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: models
      mountPath: {{ $storage.mountPath }}
    - name: tmp
      mountPath: /tmp
    {{- if and $storage.bucket.credentialsSecret (hasPrefix "gs://" $storage.bucket.uri) }}
    - name: bucket-credentials
      mountPath: /var/secrets/bucket
      readOnly: true
    {{- end }}
{{- end }}

{{/* Environment: bucket credentials and settings for TF Serving's gs:// and s3:// file systems, then extraEnv. */}}
{{- define "tf-serving.env" -}}
{{- $storage := .Values.modelStorage }}
{{- $bucket := and (eq $storage.type "bucket") (not (include "tf-serving.bucketSync" .)) }}
{{- if and $bucket (hasPrefix "gs://" $storage.bucket.uri) $storage.bucket.credentialsSecret }}
- name: GOOGLE_APPLICATION_CREDENTIALS
  value: /var/secrets/bucket/{{ $storage.bucket.gcs.keyFile }}
{{- end }}
{{- if and $bucket (hasPrefix "s3://" $storage.bucket.uri) }}
- name: AWS_REGION
  value: {{ $storage.bucket.s3.region | quote }}
- name: S3_USE_HTTPS
  value: {{ ternary "1" "0" $storage.bucket.s3.useHttps | quote }}
- name: S3_VERIFY_SSL
  value: {{ ternary "1" "0" $storage.bucket.s3.verifySsl | quote }}
{{- with $storage.bucket.s3.endpoint }}
- name: S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with $storage.bucket.credentialsSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

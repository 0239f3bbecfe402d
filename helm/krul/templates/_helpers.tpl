{{/* Names, labels and the flag lists shared by the templates. */}}

{{- define "krul.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: <release>-krul, or the release name when it already holds the chart name. */}}
{{- define "krul.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "krul.worker.fullname" -}}{{ include "krul.fullname" . }}-worker{{- end }}
{{- define "krul.kvstore.fullname" -}}{{ include "krul.fullname" . }}-kvstore{{- end }}

{{- define "krul.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "krul.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "krul.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "krul.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: krul
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component ("worker" or "kvstore"): pass (list $ "worker"). */}}
{{- define "krul.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "krul.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "krul.componentLabels" -}}
{{ include "krul.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Images. The worker's default tag carries the variant: <appVersion>-cuda or -cpu. */}}
{{- define "krul.worker.image" -}}
{{- $variant := ternary "cuda" "cpu" .Values.worker.gpu.enabled }}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion $variant) .Values.worker.image.tag }}
{{- printf "%s:%s" .Values.worker.image.repository $tag }}
{{- end }}
{{- define "krul.kvstore.image" -}}
{{- printf "%s:%s" .Values.kvstore.image.repository (default .Chart.AppVersion .Values.kvstore.image.tag) }}
{{- end }}

{{/* "8G", "64M", "512K", "1T" or a plain byte count, in bytes (as krul-kvstore reads --dram_capacity). */}}
{{- define "krul.bytes" -}}
{{- $s := upper (toString .) | trimSuffix "IB" | trimSuffix "B" }}
{{- $scale := 1 }}
{{- if hasSuffix "K" $s }}{{ $scale = 1024 }}{{ $s = trimSuffix "K" $s }}
{{- else if hasSuffix "M" $s }}{{ $scale = 1048576 }}{{ $s = trimSuffix "M" $s }}
{{- else if hasSuffix "G" $s }}{{ $scale = 1073741824 }}{{ $s = trimSuffix "G" $s }}
{{- else if hasSuffix "T" $s }}{{ $scale = 1099511627776 }}{{ $s = trimSuffix "T" $s }}
{{- end }}
{{- mul (int64 $s) $scale }}
{{- end }}

{{/* A Kubernetes quantity with a binary suffix ("100Gi"), in bytes. */}}
{{- define "krul.quantityBytes" -}}
{{- include "krul.bytes" (trimSuffix "i" (toString .)) }}
{{- end }}

{{/* DNS name of kvstore shard i: <sts>-<i>.<headless svc>.<ns>.svc.<domain>. */}}
{{- define "krul.kvstore.addresses" -}}
{{- $name := include "krul.kvstore.fullname" . }}
{{- $addrs := list }}
{{- range $i := until (int .Values.kvstore.replicas) }}
{{- $addrs = append $addrs (printf "%s-%d.%s.%s.svc.%s:%d" $name $i $name $.Release.Namespace $.Values.clusterDomain (int $.Values.kvstore.grpcPort)) }}
{{- end }}
{{- join "," $addrs }}
{{- end }}

{{/* "true" when the address is a loopback one (the binaries' rule: 127.x, ::1, localhost). */}}
{{- define "krul.isLoopback" -}}
{{- $h := trimSuffix "]" (trimPrefix "[" (toString .)) }}
{{- if or (hasPrefix "127." $h) (eq $h "::1") (eq $h "localhost") }}true{{ end }}
{{- end }}

{{/* The explicit opt-outs (values `insecure`, worker.insecureHttp) that turn into the binaries'
     --insecure / --insecure_http: non-empty when rendered. */}}
{{- define "krul.kvstore.insecure" -}}
{{- if or (and (not .Values.tls.enabled) .Values.insecure.allowPlaintext) (and (not .Values.auth.tenantTokens.enabled) .Values.insecure.allowAnyTenant) }}true{{ end }}
{{- end }}
{{- define "krul.worker.insecure" -}}
{{- if and (not .Values.tls.enabled) .Values.insecure.allowPlaintext }}true{{ end }}
{{- end }}
{{- define "krul.worker.insecureHttp" -}}
{{- if and (not .Values.auth.apiKeys.enabled) .Values.worker.insecureHttp }}true{{ end }}
{{- end }}

{{/* krul-worker flags, one per line (the ConfigMap's worker.flags, read with --flagfile). */}}
{{- define "krul.worker.flags" -}}
{{- $w := .Values.worker -}}
# krul-worker flags, written by the Helm chart from values.yaml (worker.*).
--host={{ $w.listenAddress }}
--http_port={{ $w.httpPort }}
{{- if $w.device }}
--device={{ $w.device }}
{{- end }}
{{- if $w.model.synthetic }}
--synthetic
{{- if $w.model.syntheticShape }}
--synthetic_shape={{ $w.model.syntheticShape }}
{{- end }}
{{- else }}
--model={{ $w.model.file }}
{{- if $w.model.tokenizer }}
--tokenizer={{ $w.model.tokenizer }}
{{- end }}
{{- end }}
{{- if $w.model.name }}
--model_name={{ $w.model.name }}
{{- end }}
--mode={{ $w.mode }}
--allow_mode_override={{ $w.allowModeOverride }}
--target_ratio={{ $w.targetRatio }}
--kv_dtype={{ $w.kvDtype }}
--chunk_tokens={{ $w.chunkTokens }}
--granularity_tokens={{ $w.granularityTokens }}
--expected_new_tokens={{ $w.expectedNewTokens }}
--sensitivity_threshold={{ $w.sensitivityThreshold }}
--tenant={{ $w.tenant }}
--kvstore={{ include "krul.kvstore.addresses" . }}
--kvstore_deadline={{ $w.kvstoreDeadlineMs }}ms
--persist_deadline={{ $w.persistDeadlineMs }}ms
--kvstore_replication={{ $w.kvstoreReplication }}
--kvstore_ucx={{ $w.ucx }}
--max_active={{ $w.maxActive }}
--max_queue={{ $w.maxQueue }}
--queue_timeout={{ $w.queueTimeoutMs }}ms
--threads={{ $w.threads }}
--default_max_tokens={{ $w.defaultMaxTokens }}
--max_tokens_limit={{ $w.maxTokensLimit }}
{{- if .Values.tls.enabled }}
--kvstore_tls_ca_file=/etc/krul/tls/ca.crt
{{- if .Values.tls.mutual }}
--kvstore_tls_cert_file=/etc/krul/tls/tls.crt
--kvstore_tls_key_file=/etc/krul/tls/tls.key
{{- end }}
{{- end }}
{{- if .Values.auth.tenantTokens.enabled }}
--kvstore_token_file=/etc/krul/tenant-token/token
{{- end }}
{{- if .Values.auth.apiKeys.enabled }}
--api_keys_file=/etc/krul/api-keys/api-keys
{{- end }}
{{- if .Values.auth.kvMac.enabled }}
--kv_mac_key_file=/etc/krul/kv-mac/kv-mac-key
{{- end }}
{{- if include "krul.worker.insecure" . }}
--insecure
{{- end }}
{{- if include "krul.worker.insecureHttp" . }}
--insecure_http
{{- end }}
{{- range $w.extraFlags }}
{{ . }}
{{- end }}
{{- end }}

{{/* krul-kvstore flags, one per line (the ConfigMap's kvstore.flags). */}}
{{- define "krul.kvstore.flags" -}}
{{- $k := .Values.kvstore -}}
# krul-kvstore flags, written by the Helm chart from values.yaml (kvstore.*).
--host={{ $k.listenAddress }}
--port={{ $k.grpcPort }}
--metrics_port={{ $k.metricsPort }}
--tiers={{ $k.tiers }}
{{- if ne $k.tiers "dram" }}
--rocksdb_path=/var/lib/krul/kv
--rocksdb_sync={{ $k.rocksdbSync }}
{{- end }}
--dram_capacity={{ $k.dramCapacity }}
--high_watermark={{ $k.highWatermark }}
--low_watermark={{ $k.lowWatermark }}
--write_mode={{ $k.writeMode }}
--default_ttl={{ $k.defaultTtl }}
--default_tenant_quota={{ $k.defaultTenantQuota }}
{{- if $k.tenantQuotas }}
{{- $q := list }}
{{- range $tenant, $size := $k.tenantQuotas }}
{{- $q = append $q (printf "%s=%s" $tenant (toString $size)) }}
{{- end }}
--tenant_quotas={{ join "," $q }}
{{- end }}
--allow_unknown_tenants={{ $k.allowUnknownTenants }}
--shutdown_grace={{ $k.shutdownGrace }}
--ucx={{ $k.ucx.enabled }}
{{- if .Values.tls.enabled }}
--tls_cert_file=/etc/krul/tls/tls.crt
--tls_key_file=/etc/krul/tls/tls.key
{{- if .Values.tls.mutual }}
--tls_client_ca_file=/etc/krul/tls/ca.crt
{{- end }}
{{- end }}
{{- if .Values.auth.tenantTokens.enabled }}
--tenant_tokens_file=/etc/krul/tenant-tokens/tokens
{{- end }}
{{- if include "krul.kvstore.insecure" . }}
--insecure
{{- end }}
{{- range $k.extraFlags }}
{{ . }}
{{- end }}
{{- end }}

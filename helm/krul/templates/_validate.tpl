{{/* Checks across values that values.schema.json cannot express; each failure says what to change.
     Included once, from templates/configmap.yaml. */}}
{{- define "krul.validate" -}}
{{- $w := .Values.worker }}
{{- $k := .Values.kvstore }}
{{- if ge (float64 $k.lowWatermark) (float64 $k.highWatermark) }}
{{- fail (printf "kvstore.lowWatermark (%v) must be below kvstore.highWatermark (%v)" $k.lowWatermark $k.highWatermark) }}
{{- end }}
{{- if gt (int $w.kvstoreReplication) (int $k.replicas) }}
{{- fail (printf "worker.kvstoreReplication (%v) cannot exceed the number of kvstore shards, kvstore.replicas (%v)" $w.kvstoreReplication $k.replicas) }}
{{- end }}
{{- if and $w.autoscaling.enabled (gt (int $w.autoscaling.minReplicas) (int $w.autoscaling.maxReplicas)) }}
{{- fail (printf "worker.autoscaling.minReplicas (%v) must not exceed worker.autoscaling.maxReplicas (%v)" $w.autoscaling.minReplicas $w.autoscaling.maxReplicas) }}
{{- end }}
{{- if and $w.ucx (not $k.ucx.enabled) }}
{{- fail "worker.ucx=true needs kvstore.ucx.enabled=true (the kvstore must offer the UCX data plane)" }}
{{- end }}
{{- if and (not $w.model.synthetic) (not $w.model.volume) }}
{{- fail "worker.model.synthetic=false needs worker.model.volume: a volume (e.g. a PVC) holding worker.model.file, mounted at /models" }}
{{- end }}
{{- if and (not $w.model.synthetic) (not (hasPrefix "/models/" $w.model.file)) }}
{{- fail (printf "worker.model.file (%s) must lie under /models/, where worker.model.volume is mounted" $w.model.file) }}
{{- end }}
{{- $drain := add $w.drain.endpointDelaySeconds $w.drain.maxSeconds (div (add $w.persistDeadlineMs 999) 1000) }}
{{- if lt (int $w.terminationGracePeriodSeconds) (int $drain) }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%v) is shorter than the drain it must cover: drain.endpointDelaySeconds + drain.maxSeconds + persistDeadlineMs = %v s" $w.terminationGracePeriodSeconds $drain) }}
{{- end }}
{{- if and $w.gpu.enabled (eq $w.device "cpu") }}
{{- fail "worker.device=cpu with worker.gpu.enabled=true would hold GPUs it never uses: set worker.gpu.enabled=false or device auto/cuda" }}
{{- end }}
{{- if and (not $w.gpu.enabled) (eq $w.device "cuda") }}
{{- fail "worker.device=cuda needs worker.gpu.enabled=true (the pod gets no GPU otherwise)" }}
{{- end }}
{{- /* Secure by default: a protection that is off must be accepted explicitly, as the binaries
       refuse to start insecurely off loopback without their --insecure flags. */}}
{{- if and (not .Values.tls.enabled) (not .Values.insecure.allowPlaintext) }}
{{- fail "tls.enabled=false would run the kvstore's gRPC and the workers' link to it in plaintext, which krul-kvstore and krul-worker refuse off loopback: keep TLS on (create the Secrets tls.kvstoreSecretName and tls.workerSecretName), or accept plaintext explicitly with insecure.allowPlaintext=true" }}
{{- end }}
{{- if and (not .Values.auth.tenantTokens.enabled) (not .Values.insecure.allowAnyTenant) (not (include "krul.isLoopback" $k.listenAddress)) }}
{{- fail (printf "auth.tenantTokens.enabled=false with kvstore.listenAddress %s (not loopback) lets any caller name any tenant, which krul-kvstore refuses: keep tenant tokens on (create the Secrets auth.tenantTokens.*SecretName), or accept it explicitly with insecure.allowAnyTenant=true" $k.listenAddress) }}
{{- end }}
{{- if and (not .Values.auth.apiKeys.enabled) (not $w.insecureHttp) (not (include "krul.isLoopback" $w.listenAddress)) }}
{{- fail (printf "auth.apiKeys.enabled=false with worker.listenAddress %s (not loopback) would serve the OpenAI API without API keys, which krul-worker refuses: keep API keys on (create the Secret auth.apiKeys.secretName), or accept it explicitly with worker.insecureHttp=true" $w.listenAddress) }}
{{- end }}
{{- end }}

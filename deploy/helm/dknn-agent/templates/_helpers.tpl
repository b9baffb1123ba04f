{{/* Names: <release>-dknn-agent, or the release name when it already contains the chart's. */}}
{{- define "dknn-agent.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dknn-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dknn-agent.labels" -}}
{{ include "dknn-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "dknn-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dknn-agent.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The scrape job's name: the rules' DknnAgentDown selects job=~"dknn-agent.*". */}}
{{- define "dknn-agent.jobName" -}}
{{- $name := include "dknn-agent.fullname" . -}}
{{- if hasPrefix "dknn-agent" $name -}}{{ $name }}{{- else -}}{{ printf "dknn-agent-%s" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "dknn-agent.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The SASL password's Secret: an existing one, or the one this chart makes from kafka.sasl.password. */}}
{{- define "dknn-agent.saslSecret" -}}
{{- default (printf "%s-kafka" (include "dknn-agent.fullname" .)) .Values.kafka.sasl.existingSecret -}}
{{- end -}}

{{- define "dknn-agent.saslEnabled" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol -}}true{{- end -}}
{{- end -}}

{{/*
Seconds a graceful stop may take: the last batch's flush and its retries (flush_timeout_s +
retry_budget_s, the agent's defaults when unset) plus shutdownMarginSeconds.
*/}}
{{- define "dknn-agent.terminationGracePeriod" -}}
{{- $flush := 30.0 -}}
{{- if hasKey .Values.config "flush_timeout_s" -}}{{- $flush = float64 .Values.config.flush_timeout_s -}}{{- end -}}
{{- $retry := 120.0 -}}
{{- if hasKey .Values.config "retry_budget_s" -}}{{- $retry = float64 .Values.config.retry_budget_s -}}{{- end -}}
{{- addf $flush $retry .Values.shutdownMarginSeconds | ceil | int -}}
{{- end -}}

{{/* Fails rendering when replicas could outnumber the input topic's partitions. */}}
{{- define "dknn-agent.checkReplicas" -}}
{{- $partitions := int .Values.inputPartitions -}}
{{- if gt (int .Values.replicaCount) $partitions -}}
{{- fail (printf "replicaCount %d exceeds inputPartitions %d: the extra replicas would get no partition and never be ready" (int .Values.replicaCount) $partitions) -}}
{{- end -}}
{{- if and (ne .Values.autoscaling.mode "none") (gt (int .Values.autoscaling.maxReplicas) $partitions) -}}
{{- fail (printf "autoscaling.maxReplicas %d exceeds inputPartitions %d: a consumer group never uses more consumers than partitions" (int .Values.autoscaling.maxReplicas) $partitions) -}}
{{- end -}}
{{- if and (ne .Values.autoscaling.mode "none") (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail (printf "autoscaling.minReplicas %d exceeds autoscaling.maxReplicas %d" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- if not .Values.kafka.bootstrapServers -}}
{{- fail "kafka.bootstrapServers is required (host:port[,host:port])" -}}
{{- end -}}
{{- if and (include "dknn-agent.saslEnabled" .) (not .Values.kafka.sasl.mechanism) -}}
{{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.mechanism" .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- if and (include "dknn-agent.saslEnabled" .) (not .Values.kafka.sasl.username) -}}
{{- fail "SASL needs kafka.sasl.username" -}}
{{- end -}}
{{- if and (include "dknn-agent.saslEnabled" .) (not .Values.kafka.sasl.existingSecret) (not .Values.kafka.sasl.password) -}}
{{- fail "SASL needs kafka.sasl.existingSecret (or kafka.sasl.password)" -}}
{{- end -}}
{{- if and (not .Values.bundle.persistentVolumeClaim) (not .Values.bundle.image.repository) -}}
{{- fail "the bundle needs bundle.persistentVolumeClaim or bundle.image.repository" -}}
{{- end -}}
{{- end -}}

{{/* The agent's YAML config file (the ConfigMap's config.yaml). */}}
{{- define "dknn-agent.configFile" -}}
{{- $config := deepCopy .Values.config -}}
{{- $_ := set $config "artifacts" "/bundle" -}}
{{- $_ := set $config "metrics_host" "0.0.0.0" -}}
{{- $_ := set $config "metrics_port" (int .Values.metrics.port) -}}
{{- $_ := set $config "bootstrap_servers" .Values.kafka.bootstrapServers -}}
{{- if .Values.bundle.digest -}}{{- $_ := set $config "bundle_digest" .Values.bundle.digest -}}{{- end -}}
{{- $security := dict "security_protocol" .Values.kafka.securityProtocol -}}
{{- if include "dknn-agent.saslEnabled" . -}}
{{- $_ := set $security "sasl_mechanism" .Values.kafka.sasl.mechanism -}}
{{- end -}}
{{- with .Values.kafka.tls.existingSecret -}}
{{- $_ := set $security "ssl_cafile" "/etc/dknn/kafka-tls/ca.crt" -}}
{{- if $.Values.kafka.tls.certKey -}}{{- $_ := set $security "ssl_certfile" "/etc/dknn/kafka-tls/tls.crt" -}}{{- end -}}
{{- if $.Values.kafka.tls.keyKey -}}{{- $_ := set $security "ssl_keyfile" "/etc/dknn/kafka-tls/tls.key" -}}{{- end -}}
{{- end -}}
{{- $_ := set $config "kafka_security" $security -}}
{{- toYaml $config -}}
{{- end -}}

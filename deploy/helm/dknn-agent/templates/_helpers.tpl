{{/* The chart's name, or nameOverride: app.kubernetes.io/name and the default object names. */}}
{{- define "dknn-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Names: fullnameOverride; else <release>-<name>, or the release name when it already contains the
name (`helm install dknn-agent` is dknn-agent, not dknn-agent-dknn-agent).
*/}}
{{- define "dknn-agent.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "dknn-agent.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dknn-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dknn-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The labels the chart sets on every object, without commonLabels. */}}
{{- define "dknn-agent.chartLabels" -}}
{{ include "dknn-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Every object's metadata.labels: the chart's, then commonLabels (which may not replace them). */}}
{{- define "dknn-agent.labels" -}}
{{ include "dknn-agent.chartLabels" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Labels of an object that adds its own (a dict under "extra": serviceMonitor.labels, the dashboard
sidecar's label) to the common ones. Called with (dict "ctx" $ "extra" ...); on a key both set,
the object's own wins, so a label a Prometheus or a sidecar selects on is never overridden.
*/}}
{{- define "dknn-agent.labelsWith" -}}
{{- $labels := include "dknn-agent.labels" .ctx | fromYaml -}}
{{- toYaml (mergeOverwrite $labels (.extra | default dict)) -}}
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

{{/*
Kafka TLS files: where each of /etc/dknn/kafka-tls/{ca.crt,tls.crt,tls.key} comes from, as YAML
{files: [{path, secret, key}, ...]}: the CA from kafka.tls.ca.existingSecret or else
kafka.tls.existingSecret; the client certificate and key from kafka.tls.client.existingSecret or
else kafka.tls.existingSecret's certKey/keyKey. One projected volume holds them all.
*/}}
{{- define "dknn-agent.kafkaTlsFiles" -}}
{{- $tls := .Values.kafka.tls -}}
{{- $files := list -}}
{{- if $tls.ca.existingSecret -}}
{{- $files = append $files (dict "path" "ca.crt" "secret" $tls.ca.existingSecret "key" $tls.ca.key) -}}
{{- else if $tls.existingSecret -}}
{{- $files = append $files (dict "path" "ca.crt" "secret" $tls.existingSecret "key" $tls.caKey) -}}
{{- end -}}
{{- if $tls.client.existingSecret -}}
{{- $files = append $files (dict "path" "tls.crt" "secret" $tls.client.existingSecret "key" $tls.client.certKey) -}}
{{- $files = append $files (dict "path" "tls.key" "secret" $tls.client.existingSecret "key" $tls.client.keyKey) -}}
{{- else if $tls.existingSecret -}}
{{- if $tls.certKey -}}{{- $files = append $files (dict "path" "tls.crt" "secret" $tls.existingSecret "key" $tls.certKey) -}}{{- end -}}
{{- if $tls.keyKey -}}{{- $files = append $files (dict "path" "tls.key" "secret" $tls.existingSecret "key" $tls.keyKey) -}}{{- end -}}
{{- end -}}
{{- toYaml (dict "files" $files) -}}
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
{{- $chartLabels := include "dknn-agent.chartLabels" . | fromYaml -}}
{{- range $key, $_ := .Values.commonLabels -}}
{{- if hasKey $chartLabels $key -}}
{{- fail (printf "commonLabels.%s: the chart sets this label itself (selectors and tools rely on it)" $key) -}}
{{- end -}}
{{- end -}}
{{- $tls := .Values.kafka.tls -}}
{{- if and $tls.existingSecret $tls.ca.existingSecret -}}
{{- fail "kafka.tls.existingSecret and kafka.tls.ca.existingSecret both name the CA: set one" -}}
{{- end -}}
{{- if and $tls.client.existingSecret (or $tls.certKey $tls.keyKey) -}}
{{- fail "kafka.tls.client.existingSecret and kafka.tls.certKey/keyKey both name the client certificate: set one" -}}
{{- end -}}
{{- if and .Values.metrics.tls.enabled (not .Values.metrics.tls.existingSecret) -}}
{{- fail "metrics.tls.enabled needs metrics.tls.existingSecret (a Secret with the certificate and key)" -}}
{{- end -}}
{{- if and .Values.metrics.basicAuth.enabled (not .Values.metrics.basicAuth.existingSecret) -}}
{{- fail "metrics.basicAuth.enabled needs metrics.basicAuth.existingSecret (a Secret with the user name and password)" -}}
{{- end -}}
{{- if and .Values.serviceMonitor.enabled .Values.metrics.tls.enabled -}}
{{- $tlsConfig := .Values.serviceMonitor.tlsConfig -}}
{{- if and $tlsConfig.ca.secret $tlsConfig.ca.configMap -}}
{{- fail "serviceMonitor.tlsConfig.ca: secret or configMap, not both" -}}
{{- end -}}
{{- $ca := or $tlsConfig.ca.secret $tlsConfig.ca.configMap -}}
{{- if and $ca $tlsConfig.insecureSkipVerify -}}
{{- fail "serviceMonitor.tlsConfig: a CA and insecureSkipVerify contradict each other; set one" -}}
{{- end -}}
{{- if not (or $ca $tlsConfig.insecureSkipVerify) -}}
{{- fail "metrics.tls with the ServiceMonitor needs serviceMonitor.tlsConfig.ca.secret (or .configMap): the CA Prometheus checks the agent's certificate with; or, explicitly, serviceMonitor.tlsConfig.insecureSkipVerify: true" -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.bundle.persistentVolumeClaim) (not .Values.bundle.image.repository) -}}
{{- fail "the bundle needs bundle.persistentVolumeClaim or bundle.image.repository" -}}
{{- end -}}
{{- end -}}

{{/* The agent's YAML config file (the ConfigMap's config.yaml). */}}
{{- define "dknn-agent.configFile" -}}
{{- $config := deepCopy .Values.config -}}
{{- $_ := set $config "artifacts" "/bundle" -}}
{{- $_ := set $config "bootstrap_servers" .Values.kafka.bootstrapServers -}}
{{- if .Values.bundle.digest -}}{{- $_ := set $config "bundle_digest" .Values.bundle.digest -}}{{- end -}}
{{- $security := dict "security_protocol" .Values.kafka.securityProtocol -}}
{{- if include "dknn-agent.saslEnabled" . -}}
{{- $_ := set $security "sasl_mechanism" .Values.kafka.sasl.mechanism -}}
{{- end -}}
{{- $setting := dict "ca.crt" "ssl_cafile" "tls.crt" "ssl_certfile" "tls.key" "ssl_keyfile" -}}
{{- range (include "dknn-agent.kafkaTlsFiles" . | fromYaml).files -}}
{{- $_ := set $security (get $setting .path) (printf "/etc/dknn/kafka-tls/%s" .path) -}}
{{- end -}}
{{- $_ := set $config "kafka_security" $security -}}
{{- $metrics := default (dict) $config.metrics -}}
{{- $_ := set $metrics "host" "0.0.0.0" -}}
{{- $_ := set $metrics "port" (int .Values.metrics.port) -}}
{{- if .Values.metrics.tls.enabled -}}
{{- $_ := set $metrics "tls_certfile" "/etc/dknn/metrics-tls/tls.crt" -}}
{{- $_ := set $metrics "tls_keyfile" "/etc/dknn/metrics-tls/tls.key" -}}
{{- end -}}
{{- $_ := set $config "metrics" $metrics -}}
{{- toYaml $config -}}
{{- end -}}

{{/*
The review console (console.*, `dknn-agent review`): objects <fullname>-console whose pods carry
app.kubernetes.io/name <name>-console, never the agent's name, so that no selector of the agent's
(Deployment, Service, PodDisruptionBudget, NetworkPolicy, ServiceMonitor, topology spread; a
Deployment's selector cannot change on upgrade) ever takes in a console pod.
*/}}
{{- define "dknn-agent.console.fullname" -}}
{{- printf "%s-console" (include "dknn-agent.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}

{{- define "dknn-agent.console.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-console" (include "dknn-agent.name" . | trunc 55 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The console objects' metadata.labels: commonLabels, then the chart's own (which win). */}}
{{- define "dknn-agent.console.labels" -}}
{{- $fixed := include "dknn-agent.console.selectorLabels" . | fromYaml -}}
{{- $_ := set $fixed "app.kubernetes.io/component" "review-console" -}}
{{- $_ := set $fixed "app.kubernetes.io/part-of" (include "dknn-agent.name" .) -}}
{{- $_ := set $fixed "app.kubernetes.io/version" .Chart.AppVersion -}}
{{- $_ := set $fixed "app.kubernetes.io/managed-by" .Release.Service -}}
{{- $_ := set $fixed "helm.sh/chart" (printf "%s-%s" .Chart.Name .Chart.Version) -}}
{{- toYaml (mergeOverwrite (deepCopy (.Values.commonLabels | default dict)) $fixed) -}}
{{- end -}}

{{/*
The console's scrape job: the agent's with dknn-agent replaced by dknn-review-console
(dknn-review-console[-<release>]), so DknnAgentDown (job=~"dknn-agent.*") and the dashboards' $job
never take the console for an agent; the dashboards' $review_job finds it.
*/}}
{{- define "dknn-agent.console.jobName" -}}
{{- printf "dknn-review-console%s" (include "dknn-agent.jobName" . | trimPrefix "dknn-agent") | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret holding the console's --auth-file or --token-file: an existing one or the chart's. */}}
{{- define "dknn-agent.console.authSecret" -}}
{{- default (printf "%s-auth" (include "dknn-agent.console.fullname" .)) .Values.console.auth.existingSecret -}}
{{- end -}}

{{/* The file the chart's own auth Secret holds: user:password lines (basic) or the token. */}}
{{- define "dknn-agent.console.authFile" -}}
{{- if eq .Values.console.auth.type "token" -}}
{{- printf "%s\n" .Values.console.auth.token -}}
{{- else -}}
{{- range .Values.console.auth.users }}{{ . }}{{ "\n" }}{{ end -}}
{{- end -}}
{{- end -}}

{{/* Fails rendering when the console has no credentials to check (the UI is never open to all). */}}
{{- define "dknn-agent.console.check" -}}
{{- $auth := .Values.console.auth -}}
{{- if and (eq $auth.type "basic") $auth.token -}}
{{- fail "console.auth.token is for type token; basic auth takes console.auth.users" -}}
{{- end -}}
{{- if and (eq $auth.type "token") $auth.users -}}
{{- fail "console.auth.users is for type basic; token auth takes console.auth.token" -}}
{{- end -}}
{{- if not $auth.existingSecret -}}
{{- if and (eq $auth.type "basic") (not $auth.users) -}}
{{- fail "console.enabled needs credentials: console.auth.existingSecret (a Secret whose key console.auth.key holds user:password lines), or console.auth.users" -}}
{{- end -}}
{{- if and (eq $auth.type "token") (not $auth.token) -}}
{{- fail "console.auth.type token needs console.auth.existingSecret (a Secret whose key console.auth.key holds the token), or console.auth.token" -}}
{{- end -}}
{{- end -}}
{{- if and $auth.existingSecret (or $auth.users $auth.token) -}}
{{- fail "console.auth: existingSecret and users/token both give the credentials; set one" -}}
{{- end -}}
{{- end -}}

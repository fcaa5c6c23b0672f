{{/* Names ------------------------------------------------------------------------ */}}

{{- define "ssogw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ssogw.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ssogw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ssogw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ssogw.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ssogw.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: intercom-sso-gateway
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ssogw.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ssogw.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ssogw.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Secrets ------------------------------------------------------------------------ */}}

{{- define "ssogw.secretName" -}}
{{- default (include "ssogw.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "ssogw.redisSecretName" -}}
{{- default (include "ssogw.secretName" .) .Values.redis.existingSecret -}}
{{- end -}}

{{- define "ssogw.usersSecretName" -}}
{{- default (include "ssogw.secretName" .) .Values.localUsers.existingSecret -}}
{{- end -}}

{{- define "ssogw.jwtEnabled" -}}
{{- if ne (toString (dig "jwt" "enabled" true .Values.config)) "false" -}}true{{- end -}}
{{- end -}}

{{- define "ssogw.localProvider" -}}
{{- if eq (toString (dig "providers" "default" "local" .Values.config)) "local" -}}true{{- end -}}
{{- end -}}

{{/* Mount points inside the pod ------------------------------------------------------ */}}
{{- define "ssogw.configDir" -}}/etc/sso-gateway/config{{- end -}}
{{- define "ssogw.policiesDir" -}}/etc/sso-gateway/policies{{- end -}}
{{- define "ssogw.secretsDir" -}}/etc/sso-gateway/secrets{{- end -}}
{{- define "ssogw.redisDir" -}}/etc/sso-gateway/redis{{- end -}}
{{- define "ssogw.usersDir" -}}/etc/sso-gateway/users{{- end -}}
{{- define "ssogw.dataDir" -}}/var/lib/sso-gateway{{- end -}}

{{/* The gateway's config.yaml: the free-form `config` with the chart's own keys on top. */}}
{{- define "ssogw.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- $listen := merge (dict "host" "0.0.0.0" "port" (int .Values.containerPort)) (get $cfg "listen" | default dict) -}}
{{- $_ := set $listen "host" "0.0.0.0" -}}
{{- $_ := set $listen "port" (int .Values.containerPort) -}}
{{- $_ := set $cfg "listen" $listen -}}
{{- $_ := set $cfg "data_dir" (include "ssogw.dataDir" .) -}}
{{- $_ := set $cfg "policies_dir" (include "ssogw.policiesDir" .) -}}
{{- if include "ssogw.jwtEnabled" . -}}
{{- $jwt := get $cfg "jwt" | default dict -}}
{{- $_ := set $jwt "key_file" (printf "%s/jwt-signing-key.json" (include "ssogw.secretsDir" .)) -}}
{{- $published := list -}}
{{- range $i, $key := .Values.secrets.jwtPublishedKeyKeys -}}
{{- $published = append $published (printf "%s/jwt-published-%d.json" (include "ssogw.secretsDir" $) $i) -}}
{{- end -}}
{{- $_ := set $jwt "published_key_files" $published -}}
{{- $_ := set $cfg "jwt" $jwt -}}
{{- end -}}
{{- $session := get $cfg "session" | default dict -}}
{{- $_ := unset $session "redis_url" -}}
{{- $_ := unset $session "redis_sentinel" -}}
{{- if .Values.redis.enabled -}}
{{- $_ := set $session "store" "redis" -}}
{{- if .Values.redis.sentinel.enabled -}}
{{- $s := .Values.redis.sentinel -}}
{{- $sentinel := dict "master" $s.master "sentinels" $s.sentinels "db" (int $s.db) -}}
{{- with $s.username }}{{ $_ := set $sentinel "username" . }}{{ end -}}
{{- with $s.sentinelUsername }}{{ $_ := set $sentinel "sentinel_username" . }}{{ end -}}
{{- $_ := set $session "redis_sentinel" $sentinel -}}
{{- else if .Values.redis.url -}}
{{- $_ := set $session "redis_url" .Values.redis.url -}}
{{- end -}}
{{- else -}}
{{- $_ := set $session "store" "file" -}}
{{- end -}}
{{- $_ := set $cfg "session" $session -}}
{{- if include "ssogw.localProvider" . -}}
{{- $providers := get $cfg "providers" | default dict -}}
{{- $local := get $providers "local" | default dict -}}
{{- $_ := set $local "users_file" (printf "%s/users.yaml" (include "ssogw.usersDir" .)) -}}
{{- $_ := set $providers "local" $local -}}
{{- $_ := set $cfg "providers" $providers -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The identity header names the gateway answers with (for auth-response-headers). */}}
{{- define "ssogw.identityHeaders" -}}
{{- $h := dig "headers" dict .Values.config -}}
{{- $names := list (get $h "user" | default "X-Auth-Request-User") (get $h "email" | default "X-Auth-Request-Email") (get $h "groups" | default "X-Auth-Request-Groups") (get $h "tier" | default "X-Auth-Request-Tier") -}}
{{- if include "ssogw.jwtEnabled" . -}}
{{- $names = append $names (get $h "jwt" | default "X-Auth-Request-Jwt") -}}
{{- end -}}
{{- if hasKey $h "extra" -}}
{{- range $name, $_ := (get $h "extra" | default dict) }}{{ $names = append $names $name }}{{ end -}}
{{- else -}}
{{- $names = concat $names (list "X-Auth-Request-Extension" "X-Auth-Request-Department") -}}
{{- end -}}
{{- join "," $names -}}
{{- end -}}

{{/* Checks that fail the render with a clear message ------------------------------------ */}}
{{- define "ssogw.validate" -}}
{{- $replicas := int .Values.replicaCount -}}
{{- if and (not .Values.redis.enabled) (or .Values.autoscaling.enabled (gt $replicas 1)) -}}
{{- fail "redis.enabled is false: sessions would live in each pod, so run one replica (replicaCount: 1, autoscaling.enabled: false) or enable Redis" -}}
{{- end -}}
{{- if and .Values.redis.enabled .Values.redis.sentinel.enabled (empty .Values.redis.sentinel.sentinels) -}}
{{- fail "redis.sentinel.enabled needs redis.sentinel.sentinels (host:port of each sentinel)" -}}
{{- end -}}
{{- if and .Values.redis.url (regexMatch "://[^/]*@" .Values.redis.url) -}}
{{- fail "redis.url must not hold credentials: put the whole URL into a Secret (redis.existingSecret / redis.urlKey) and leave redis.url empty" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- end -}}

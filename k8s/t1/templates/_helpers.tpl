{{/* Release-scoped name prefix, cut to 40 characters so "<name>-generator-<hash>" fits 63. */}}
{{- define "t1.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "t1.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "generator"). */}}
{{- define "t1.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Image of a service; the Dockerfile target has the same name as the service. */}}
{{- define "t1.image" -}}
{{- $v := .root.Values.image -}}
{{- printf "%st1-%s:%s" (ternary "" (printf "%s/" $v.registry) (empty $v.registry)) .component ($v.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{- define "t1.redisSecret" -}}
{{- .Values.redis.auth.existingSecret | default (printf "%s-redis" (include "t1.fullname" .)) -}}
{{- end -}}

{{- define "t1.claimName" -}}
{{- .Values.storage.existingClaim | default (printf "%s-data" (include "t1.fullname" .)) -}}
{{- end -}}

{{/* Environment every service gets: Redis (password from the Secret, expanded by the kubelet
     into the URL), the run directory on the shared volume and the model. */}}
{{- define "t1.env" -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "t1.redisSecret" . }}
      key: redis-password
- name: T1__REDIS__URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s-redis:6379/0" (include "t1.fullname" .) | quote }}
- name: T1__RUN_DIR
  value: {{ printf "%s/run" .Values.storage.mountPath | quote }}
- name: T1__MODEL__PATH
  value: {{ .Values.modelPath | quote }}
- name: PYTHONUNBUFFERED
  value: "1"
# trainer.weight_broadcast: generators reach trainer rank 0 (pod 0) through the headless Service
- name: T1__TRAINER__BROADCAST_HOST
  value: {{ printf "%s-trainer-0.%s-trainer" (include "t1.fullname" .) (include "t1.fullname" .) | quote }}
{{- end -}}

{{/* Container args of a service: bind all interfaces, the port from values, the mounted config. */}}
{{- define "t1.args" -}}
- --host
- 0.0.0.0
- --port
- {{ .port | quote }}
- --config
- /etc/t1/config.yaml
{{- end -}}

{{/* /health answers 503 until the service is ready (engine loaded, trainer restored). */}}
{{- define "t1.probes" -}}
startupProbe:
  httpGet: {path: /health, port: http}
  periodSeconds: {{ .startup.periodSeconds | default 10 }}
  failureThreshold: {{ .startup.failureThreshold | default 30 }}
readinessProbe:
  httpGet: {path: /health, port: http}
  periodSeconds: 10
  timeoutSeconds: 5
livenessProbe:
  httpGet: {path: /health, port: http}
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/* Generators and the trainer start only once the model directory is complete (the bootstrap
     Job renames the finished model into place, so config.json means complete). Its own image:
     nothing extra to pull onto a GPU node. Call with (dict "root" $ "component" "generator"). */}}
{{- define "t1.waitForModel" -}}
{{- $root := .root -}}
- name: wait-for-model
  image: {{ include "t1.image" . }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command: [sh, -c, 'until [ -f "$MODEL/config.json" ]; do echo "waiting for $MODEL/config.json"; sleep 10; done']
  env:
    - name: MODEL
      value: {{ $root.Values.modelPath | quote }}
  securityContext: {{- toYaml $root.Values.containerSecurityContext | nindent 4 }}
  resources:
    requests: {cpu: 10m, memory: 32Mi}
    limits: {memory: 64Mi}
  volumeMounts:
    - {name: data, mountPath: {{ $root.Values.storage.mountPath }}}
{{- end -}}

{{- define "t1.volumes" -}}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "t1.claimName" . }}
- name: config
  configMap:
    name: {{ include "t1.fullname" . }}-config
{{- end -}}

{{/* The verifier's REST token: the user's Secret, or the one the chart generates. */}}
{{- define "t1.verifierTokenSecret" -}}
{{- .Values.verifier.authToken.existingSecret | default (printf "%s-verifier-token" (include "t1.fullname" .)) -}}
{{- end -}}

{{- define "t1.verifierTokenKey" -}}
{{- if .Values.verifier.authToken.existingSecret }}{{ .Values.verifier.authToken.key }}{{ else }}token{{ end -}}
{{- end -}}

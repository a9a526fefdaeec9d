{{- define "tokenfab.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tokenfab.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tokenfab.labels" -}}
{{ include "tokenfab.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* vLLM's KVEventsConfig JSON; $(POD_IP) is expanded by the kubelet from the pod's env. */}}
{{- define "tokenfab.kvEventsConfig" -}}
{{- $k := .Values.kvEvents -}}
{{- $cfg := dict "enable_kv_cache_events" true "publisher" "zmq" "endpoint" $k.endpoint "replay_endpoint" (printf "tcp://*:%v" $k.replayPort) "buffer_steps" (int $k.bufferSteps) "max_queue_size" (int $k.maxQueueSize) "topic" (printf "%s@$(POD_IP)@%s" $k.topicPrefix .Values.model.servedName) -}}
{{- toJson $cfg -}}
{{- end -}}

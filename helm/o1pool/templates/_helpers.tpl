{{/* Names and labels shared by every template. */}}

{{- define "o1pool.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "o1pool.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "o1pool.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "o1pool.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "o1pool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "o1pool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "o1pool.labels" -}}
{{ include "o1pool.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Cluster-scoped names include the release namespace: two releases must not collide. */}}
{{- define "o1pool.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "o1pool.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "o1pool.image" -}}
{{- printf "%s:%s" .repository (default .appVersion .tag) -}}
{{- end -}}

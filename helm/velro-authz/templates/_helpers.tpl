{{/* The name every object of a release carries. */}}
{{- define "velro-authz.fullname" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the pods (never change them in place). */}}
{{- define "velro-authz.selector" -}}
app.kubernetes.io/name: velro-authz
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "velro-authz.labels" -}}
{{ include "velro-authz.selector" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The image, by digest when one is given. */}}
{{- define "velro-authz.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Restricted pod security (Pod Security Standards "restricted"). */}}
{{- define "velro-authz.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsUser }}
fsGroup: {{ .Values.securityContext.runAsUser }}
seccompProfile: { type: RuntimeDefault }
{{- end -}}

{{- define "velro-authz.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities: { drop: [ALL] }
seccompProfile: { type: RuntimeDefault }
{{- end -}}

{{/* The secrets as environment variables (never values of this chart). */}}
{{- define "velro-authz.secretEnv" -}}
{{- range .Values.secretEnv }}
- name: {{ . }}
  valueFrom:
    secretKeyRef: { name: {{ $.Values.existingSecret }}, key: {{ . }}, optional: true }
{{- end }}
{{- end -}}

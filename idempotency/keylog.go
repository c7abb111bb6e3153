package idempotency

import (
	"net/http"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// keyLogger logs one request's decisions with its key_hash (when it has a
// key) and request_id. Unlike Logger.With, it costs nothing for entries below
// the configured level, which at Caddy's default is every entry of a healthy
// request: not even the request id is made.
type keyLogger struct {
	log       *zap.Logger
	r         *http.Request
	requestID func(*http.Request) string // nil: no request_id field
	rk        RecordKey
	keyed     bool
}

func (h *Handler) logger(r *http.Request) keyLogger {
	return keyLogger{log: h.cfg.Logger, r: r, requestID: h.cfg.RequestID}
}

// withKey is l naming the record rk.
func (l keyLogger) withKey(rk RecordKey) keyLogger {
	l.rk, l.keyed = rk, true
	return l
}

func (l keyLogger) Info(msg string, fields ...zap.Field)  { l.write(zapcore.InfoLevel, msg, fields) }
func (l keyLogger) Warn(msg string, fields ...zap.Field)  { l.write(zapcore.WarnLevel, msg, fields) }
func (l keyLogger) Error(msg string, fields ...zap.Field) { l.write(zapcore.ErrorLevel, msg, fields) }

func (l keyLogger) write(level zapcore.Level, msg string, fields []zap.Field) {
	if ce := l.log.Check(level, msg); ce != nil {
		l.emit(ce, fields)
	}
}

// decision writes the debug line of a request's outcome; its fields are
// only made when the line is written.
func (l keyLogger) decision(v verdict) {
	ce := l.log.Check(zapcore.DebugLevel, "idempotency decision")
	if ce == nil {
		return
	}
	fields := make([]zap.Field, 0, 8)
	fields = append(fields, zap.String("outcome", string(v.outcome)))
	if v.status != 0 {
		fields = append(fields, zap.Int("status", v.status))
	}
	switch {
	case v.coded:
		fields = append(fields, zap.String("code", v.reason))
	case v.reason != "":
		fields = append(fields, zap.String("reason", v.reason))
	}
	if v.detail.Key != "" {
		fields = append(fields, v.detail)
	}
	if v.outcome == OutcomeRejected { // what was refused, for the operator who reads why
		fields = append(fields, zap.String("method", l.r.Method), zap.String("path", l.r.URL.Path))
	}
	l.emit(ce, fields)
}

// emit writes ce with fields, the key's hash and the request id.
func (l keyLogger) emit(ce *zapcore.CheckedEntry, fields []zap.Field) {
	if l.keyed {
		fields = append(fields, zap.String("key_hash", l.rk.String()))
	}
	if l.requestID != nil {
		if id := l.requestID(l.r); id != "" {
			fields = append(fields, zap.String("request_id", id))
		}
	}
	ce.Write(fields...)
}

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

func (l keyLogger) Debug(msg string, fields ...zap.Field) { l.write(zapcore.DebugLevel, msg, fields) }
func (l keyLogger) Warn(msg string, fields ...zap.Field)  { l.write(zapcore.WarnLevel, msg, fields) }
func (l keyLogger) Error(msg string, fields ...zap.Field) { l.write(zapcore.ErrorLevel, msg, fields) }

func (l keyLogger) write(level zapcore.Level, msg string, fields []zap.Field) {
	ce := l.log.Check(level, msg)
	if ce == nil {
		return
	}
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

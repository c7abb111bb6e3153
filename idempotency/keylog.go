package idempotency

import (
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// keyLogger logs one record's decisions with its key_hash. Unlike
// Logger.With, it costs nothing for entries below the configured level,
// which at Caddy's default is every entry of a healthy request.
type keyLogger struct {
	log *zap.Logger
	rk  RecordKey
}

func (l keyLogger) Debug(msg string, fields ...zap.Field) { l.write(zapcore.DebugLevel, msg, fields) }
func (l keyLogger) Warn(msg string, fields ...zap.Field)  { l.write(zapcore.WarnLevel, msg, fields) }
func (l keyLogger) Error(msg string, fields ...zap.Field) { l.write(zapcore.ErrorLevel, msg, fields) }

func (l keyLogger) write(level zapcore.Level, msg string, fields []zap.Field) {
	if ce := l.log.Check(level, msg); ce != nil {
		ce.Write(append(fields, zap.String("key_hash", l.rk.String()))...)
	}
}

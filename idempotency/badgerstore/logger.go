package badgerstore

import (
	"fmt"
	"strings"

	"github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"
)

// badgerLogger routes Badger's printf-style logs to zap. Badger's Info lines
// are routine (compactions, replay progress), so they go to Debug.
type badgerLogger struct{ log *zap.Logger }

var _ badger.Logger = badgerLogger{}

func (l badgerLogger) Errorf(format string, args ...any) {
	l.log.Error(badgerMessage(format, args))
}

func (l badgerLogger) Warningf(format string, args ...any) {
	l.log.Warn(badgerMessage(format, args))
}

func (l badgerLogger) Infof(format string, args ...any) { l.debug(format, args) }

func (l badgerLogger) Debugf(format string, args ...any) { l.debug(format, args) }

func (l badgerLogger) debug(format string, args []any) {
	if l.log.Core().Enabled(zap.DebugLevel) { // skip formatting what nobody reads
		l.log.Debug(badgerMessage(format, args))
	}
}

func badgerMessage(format string, args []any) string {
	return strings.TrimRight(fmt.Sprintf(format, args...), "\n")
}

package e2e

import (
	"context"
	"net/http"
	"testing"

	"github.com/openai/openai-go/v3/option"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

// The OpenAI Go SDK, with its own retries (default MaxRetries), creating a
// batch whose answer the backend loses after creating it.
func TestAmbiguousOpenAISDK(t *testing.T) {
	for _, tc := range []struct {
		name      string
		fault     batchesbackend.Fault
		reconcile bool
		batches   int // the tenant's batches once the SDK is done
		attempts  int
	}{
		// Reconciled: the first answer is already the batch.
		{"create-then-500x1", batchesbackend.Fault{After: true, Status: http.StatusInternalServerError, Times: 1}, true, 1, 1},
		{"create-then-502x2", batchesbackend.Fault{After: true, Status: http.StatusBadGateway, Times: 2}, true, 1, 1},
		// Without reconcile, each lost answer is a batch more: the SDK's
		// two retries create again.
		{"create-then-502x2", batchesbackend.Fault{After: true, Status: http.StatusBadGateway, Times: 2}, false, 3, 3},
	} {
		mode := map[bool]string{true: "on", false: "off"}[tc.reconcile]
		t.Run(tc.name+"/reconcile="+mode, func(t *testing.T) {
			block := plainBlock(t)
			if tc.reconcile {
				block = reconcileBlock(t, "")
			}
			s := newAmbiguousStack(t, block)
			client, ct := sdkClient(s) // the SDK's default retries
			s.backend.SetFault(tc.fault)

			var res *http.Response
			b, err := client.Batches.New(context.Background(), sdkParams("file-abc123"),
				option.WithHeader("Idempotency-Key", uniqueKey("sdk-"+tc.name)), option.WithResponseInto(&res))
			if err != nil {
				t.Fatalf("Batches.New: %v", err)
			}
			checkBatch(t, b, "file-abc123")
			attempts := ct.take()
			got := s.backend.Batches(tenantA)
			t.Logf("fault=%s(sdk) reconcile=%s batches=%d attempts=%d %+v", tc.name, mode, len(got), len(attempts), attempts)
			if len(got) != tc.batches || got[len(got)-1].ID != b.ID {
				t.Fatalf("the backend holds %s for the tenant, the SDK got %s; want %d batches, the SDK's the newest",
					batchIDList(got), b.ID, tc.batches)
			}
			if len(attempts) != tc.attempts {
				t.Fatalf("the SDK made %d attempts, want %d", len(attempts), tc.attempts)
			}
			if reconciled := res.Header.Get("Idempotent-Reconciled"); (reconciled == "true") != tc.reconcile {
				t.Fatalf("Idempotent-Reconciled %q with reconcile %s", reconciled, mode)
			}
		})
	}
}

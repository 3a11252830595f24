package etcd

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// What each error clientv3 and this package give means for a request.
func TestKindOf(t *testing.T) {
	tests := []struct {
		err  error
		want Kind
	}{
		{ErrNoEndpoints, KindNoEndpoints},
		{ErrClosed, KindClosed},
		{fmt.Errorf("%w: authentication failed", ErrUnavailable), KindUnavailable},
		{rpctypes.ErrNoLeader, KindUnavailable},
		{rpctypes.ErrGRPCNoSpace, KindUnavailable},
		{rpctypes.ErrTooManyRequests, KindUnavailable},
		{rpctypes.ErrPermissionDenied, KindPermissionDenied},
		{rpctypes.ErrGRPCPermissionDenied, KindPermissionDenied},
		{rpctypes.ErrCompacted, KindCompacted},
		{rpctypes.ErrGRPCCompacted, KindCompacted},
		{rpctypes.ErrFutureRev, KindFutureRevision},
		{rpctypes.ErrRequestTooLarge, KindTooLarge},
		{rpctypes.ErrTimeout, KindTimeout},
		{rpctypes.ErrTimeoutDueToLeaderFail, KindTimeout},
		{fmt.Errorf("etcd: put: %w", context.DeadlineExceeded), KindTimeout},
		{status.Error(codes.DeadlineExceeded, "deadline"), KindTimeout},
		{status.Error(codes.Unavailable, "connection reset"), KindConnectionLost},
		{rpctypes.ErrStopped, KindConnectionLost},
		{errors.New("something else"), KindOther},
	}
	for _, tt := range tests {
		if got := KindOf(tt.err); got != tt.want {
			t.Errorf("KindOf(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

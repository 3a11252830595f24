package etcd

import (
	"context"
	"errors"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Kind classifies an error from this package by what it means for the
// request, so that callers (the server) can answer without knowing gRPC or
// etcd's error types. The zero Kind is KindOther.
type Kind int

const (
	// KindOther is anything not listed: a bug, or an error etcd should not
	// give.
	KindOther Kind = iota
	// KindNoEndpoints: no endpoint set is applied yet. Not sent.
	KindNoEndpoints
	// KindClosed: the client is closed. Not sent.
	KindClosed
	// KindUnavailable: not sent (no member reachable), or refused by etcd
	// before anything was proposed (no leader, no space, too many requests).
	// Safe to retry.
	KindUnavailable
	// KindConnectionLost: the connection broke under the request. A read
	// can be retried; a write may or may not have been applied.
	KindConnectionLost
	// KindTimeout: no answer in time. A write may or may not have been
	// applied.
	KindTimeout
	// KindPermissionDenied: etcd's own access control refused the client's
	// user. Nothing was applied.
	KindPermissionDenied
	// KindCompacted: the revision asked for has been compacted.
	KindCompacted
	// KindFutureRevision: the revision asked for is newer than the store's.
	KindFutureRevision
	// KindTooLarge: etcd refused the request as too large.
	KindTooLarge
	// KindInvalid: etcd refused the request as malformed (a transaction
	// with more operations than --max-txn-ops, or writing a key twice).
	// Nothing was applied.
	KindInvalid
	// KindThrottled: the host budget (SetRequestBudget) could not send the
	// request before its deadline (a *BudgetError). Not sent.
	KindThrottled
)

// KindOf classifies err (nil: KindOther; check err first). etcd's errors
// are matched in both forms: the one clientv3 converts them to, and the
// gRPC status a raw call returns.
func KindOf(err error) Kind {
	switch {
	case errors.As(err, new(*BudgetError)):
		return KindThrottled
	case errors.Is(err, ErrNoEndpoints):
		return KindNoEndpoints
	case errors.Is(err, ErrClosed):
		return KindClosed
	case errors.Is(err, ErrUnavailable):
		return KindUnavailable
	case isAny(err, rpctypes.ErrPermissionDenied, rpctypes.ErrGRPCPermissionDenied):
		return KindPermissionDenied
	case isAny(err, rpctypes.ErrCompacted, rpctypes.ErrGRPCCompacted):
		return KindCompacted
	case isAny(err, rpctypes.ErrFutureRev, rpctypes.ErrGRPCFutureRev):
		return KindFutureRevision
	case isAny(err, rpctypes.ErrRequestTooLarge, rpctypes.ErrGRPCRequestTooLarge), sendLimit(err):
		return KindTooLarge
	case isAny(err, rpctypes.ErrTooManyOps, rpctypes.ErrGRPCTooManyOps, rpctypes.ErrDuplicateKey, rpctypes.ErrGRPCDuplicateKey):
		return KindInvalid
	case isAny(err, rpctypes.ErrTimeout, rpctypes.ErrGRPCTimeout, rpctypes.ErrTimeoutDueToLeaderFail,
		rpctypes.ErrGRPCTimeoutDueToLeaderFail, rpctypes.ErrTimeoutDueToConnectionLost,
		rpctypes.ErrGRPCTimeoutDueToConnectionLost, rpctypes.ErrTimeoutWaitAppliedIndex,
		rpctypes.ErrGRPCTimeoutWaitAppliedIndex, context.DeadlineExceeded),
		status.Code(err) == codes.DeadlineExceeded:
		return KindTimeout
	case isAny(err, rpctypes.ErrNoLeader, rpctypes.ErrGRPCNoLeader, rpctypes.ErrNoSpace, rpctypes.ErrGRPCNoSpace,
		rpctypes.ErrTooManyRequests, rpctypes.ErrGRPCRequestTooManyRequests):
		return KindUnavailable
	case status.Code(err) == codes.Unavailable, isAny(err, rpctypes.ErrStopped, rpctypes.ErrGRPCStopped):
		return KindConnectionLost
	}
	return KindOther
}

// failsAlike reports whether err, a failed batch's, would be every one of
// its requests' answer had each been sent alone: nothing is reachable, the
// client is closed, or time ran out.
func failsAlike(err error) bool {
	switch KindOf(err) {
	case KindNoEndpoints, KindClosed:
		return true
	}
	return errors.Is(err, ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, context.Canceled) || status.Code(err) == codes.DeadlineExceeded || status.Code(err) == codes.Canceled
}

// refusedUnapplied reports whether etcd (or the client, before sending)
// refused a whole transaction without applying any of it, for a reason that
// may belong to one of its requests only: too many operations or too large
// (KindInvalid, KindTooLarge), a permission one key lacks, a quota, or too
// many requests.
func refusedUnapplied(err error) bool {
	switch KindOf(err) {
	case KindInvalid, KindTooLarge, KindPermissionDenied:
		return true
	}
	return isAny(err, rpctypes.ErrNoSpace, rpctypes.ErrGRPCNoSpace, rpctypes.ErrTooManyRequests, rpctypes.ErrGRPCRequestTooManyRequests)
}

// sendLimit: the client's own limit on what it sends (MaxCallSendMsgSize)
// refused the request, which never left. (The same code on a received
// message comes after the request was applied.)
func sendLimit(err error) bool {
	s, ok := status.FromError(err)
	return ok && s.Code() == codes.ResourceExhausted && strings.Contains(s.Message(), "trying to send")
}

func isAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

package recorder

import (
	"encoding/binary"
	"errors"
	"math"
)

// EncodeChunks encodes absolute chunk times as the requests.chunk_ns blob:
// unsigned varints, the first relative to startNS, then the gaps between
// successive chunks (see the package documentation for the format). It
// returns nil for no chunks.
//
// Times are expected to be ascending and not before startNS. A time that
// goes backwards (a wall-clock step) is stored as equal to the previous one
// rather than failing the whole record: the count of chunks stays right and
// only that one gap is clamped to zero.
func EncodeChunks(startNS int64, chunkNS []int64) []byte {
	if len(chunkNS) == 0 {
		return nil
	}
	return AppendChunks(make([]byte, 0, 4*len(chunkNS)), startNS, chunkNS)
}

// AppendChunks is [EncodeChunks] appending to dst, so a writer can reuse
// one buffer for every record.
func AppendChunks(dst []byte, startNS int64, chunkNS []int64) []byte {
	prev := startNS
	for _, t := range chunkNS {
		var d uint64
		if t > prev {
			// uint64 subtraction is exact even when t-prev overflows int64
			d = uint64(t) - uint64(prev)
		}
		dst = binary.AppendUvarint(dst, d)
		if t > prev {
			prev = t
		}
	}
	return dst
}

// Errors returned by DecodeChunks for a blob this package did not write.
var (
	errChunksTruncated = errors.New("chunk times: truncated varint")
	errChunksOverflow  = errors.New("chunk times: value overflows int64")
)

// DecodeChunks decodes a requests.chunk_ns blob back into absolute chunk
// times. A nil or empty blob gives nil. A malformed blob (truncated varint,
// a value beyond int64) gives an error, never a panic.
func DecodeChunks(startNS int64, blob []byte) ([]int64, error) {
	if len(blob) == 0 {
		return nil, nil
	}
	// every varint ends in exactly one byte without the continuation bit,
	// so this is the exact count and the slice is allocated once
	n := 0
	for _, b := range blob {
		if b < 0x80 {
			n++
		}
	}
	out := make([]int64, 0, n)
	t := startNS
	for len(blob) > 0 {
		d, k := binary.Uvarint(blob)
		if k == 0 {
			return nil, errChunksTruncated
		}
		// the largest step that keeps t within int64; uint64 arithmetic
		// makes this right for a negative start too
		if k < 0 || d > uint64(math.MaxInt64)-uint64(t) {
			return nil, errChunksOverflow
		}
		t = int64(uint64(t) + d)
		out = append(out, t)
		blob = blob[k:]
	}
	return out, nil
}

package idempotency

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
)

// batchRequest is what a batch is matched on in the create's body.
type batchRequest struct {
	InputFileID      string            `json:"input_file_id"`
	Endpoint         string            `json:"endpoint"`
	CompletionWindow string            `json:"completion_window"`
	Metadata         map[string]string `json:"metadata"`
}

func parseBatchRequest(body []byte) (batchRequest, error) {
	var r batchRequest
	if !isJSONObject(body) {
		return r, errors.New("not a JSON object")
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return r, err
	}
	return r, nil
}

// batchItem is one batch of a listing.
type batchItem struct {
	batchRequest
	ID        string
	CreatedAt float64 // Unix seconds
	Raw       []byte  // as listed
}

func parseBatchItem(raw json.RawMessage) (batchItem, error) {
	var v struct {
		batchRequest
		ID        string   `json:"id"`
		CreatedAt *float64 `json:"created_at"`
	}
	if !isJSONObject(raw) {
		return batchItem{}, errors.New("not a JSON object")
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return batchItem{}, err
	}
	if v.ID == "" {
		return batchItem{}, errors.New("no id")
	}
	if v.CreatedAt == nil {
		return batchItem{}, fmt.Errorf("batch %s has no created_at", v.ID)
	}
	return batchItem{batchRequest: v.batchRequest, ID: v.ID, CreatedAt: *v.CreatedAt, Raw: bytes.Clone(raw)}, nil
}

// matches reports whether the batch is the request's: with a tag, by its
// metadata entry tagKey (and input_file_id); without, by input_file_id,
// endpoint, completion_window and metadata, where null, absent and {} are
// all equal.
func (it *batchItem) matches(req batchRequest, tagKey, tag string) bool {
	if it.InputFileID != req.InputFileID {
		return false
	}
	if tag != "" {
		v, ok := it.Metadata[tagKey]
		return ok && v == tag
	}
	return it.Endpoint == req.Endpoint &&
		it.CompletionWindow == req.CompletionWindow &&
		maps.Equal(it.Metadata, req.Metadata)
}

// near reports whether it, not a match, could still be the attempt's batch
// as a backend changed it: the same input file and endpoint, and, with a
// tag, no tag of another attempt (a backend may drop metadata it was sent).
func (it *batchItem) near(req batchRequest, tagKey, tag string) bool {
	if it.InputFileID != req.InputFileID || it.Endpoint != req.Endpoint {
		return false
	}
	if tag != "" {
		_, tagged := it.Metadata[tagKey]
		return !tagged
	}
	return true
}

// batchList is one listing response: {"object":"list","data":[...],
// "first_id":..,"last_id":..,"has_more":bool}.
type batchList struct {
	Data    []json.RawMessage
	LastID  string
	HasMore bool
}

func parseBatchList(body []byte) (batchList, error) {
	var v struct {
		Object  *string            `json:"object"`
		Data    *[]json.RawMessage `json:"data"`
		LastID  *string            `json:"last_id"`
		HasMore *bool              `json:"has_more"`
	}
	if !isJSONObject(body) {
		return batchList{}, errors.New("not a JSON object")
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return batchList{}, err
	}
	if v.Object != nil && *v.Object != "list" {
		return batchList{}, fmt.Errorf("object is %q", *v.Object)
	}
	if v.Data == nil {
		return batchList{}, errors.New("no data array")
	}
	l := batchList{Data: *v.Data, HasMore: true}
	if v.LastID != nil {
		l.LastID = *v.LastID
	}
	if v.HasMore != nil { // without has_more, the end is not known
		l.HasMore = *v.HasMore
	}
	return l, nil
}

// cursor is the after to list the next page with: last_id, or the id of
// the last batch listed.
func (l *batchList) cursor() string {
	if l.LastID != "" {
		return l.LastID
	}
	if n := len(l.Data); n > 0 {
		var v struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(l.Data[n-1], &v) == nil {
			return v.ID
		}
	}
	return ""
}

func isJSONObject(b []byte) bool {
	b = bytes.TrimLeft(b, " \t\r\n")
	return len(b) > 0 && b[0] == '{' && json.Valid(b)
}

// jsonMember is one member of a JSON object, by its value's bytes.
type jsonMember struct {
	Name       string
	Start, End int // the value is obj[Start:End]
}

// jsonObject is a JSON object's members in order, and where a member can
// be added: after the last member's value, or after '{'.
type jsonObject struct {
	Members []jsonMember
	Insert  int
}

// scanJSONObject reads the members of the JSON object obj, which must be
// nothing else (whitespace aside).
func scanJSONObject(obj []byte) (jsonObject, error) {
	var o jsonObject
	if !isJSONObject(obj) {
		return o, errors.New("not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(obj))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return o, errors.New("not a JSON object")
	}
	o.Insert = int(dec.InputOffset())
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return o, err
		}
		name, ok := t.(string)
		if !ok {
			return o, errors.New("not a JSON object")
		}
		// The decoder stops after the name; the value follows a colon.
		start := int(dec.InputOffset())
		for start < len(obj) && (isJSONSpace(obj[start]) || obj[start] == ':') {
			start++
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return o, err
		}
		end := int(dec.InputOffset())
		if end < start || !bytes.Equal(obj[start:end], raw) {
			return o, errors.New("cannot place the member " + name)
		}
		o.Members = append(o.Members, jsonMember{Name: name, Start: start, End: end})
		o.Insert = end
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('}') {
		return o, errors.New("not a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return o, errors.New("not one JSON object")
	}
	return o, nil
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// spliceMetadataEntry returns a copy of body with the entry key: value
// added to its metadata member, every other byte kept.
func spliceMetadataEntry(body []byte, key, value string) ([]byte, error) {
	obj, err := scanJSONObject(body)
	if err != nil {
		return nil, errors.New("reconcile batches tag needs a JSON object body")
	}
	var md *jsonMember
	for i := range obj.Members {
		if obj.Members[i].Name != "metadata" {
			continue
		}
		if md != nil {
			return nil, errors.New("reconcile batches tag needs one metadata member: the body has two")
		}
		md = &obj.Members[i]
	}
	entry := append(append(jsonString(key), ':'), jsonString(value)...)
	newObject := append(append([]byte{'{'}, entry...), '}')
	if md == nil {
		ins := append([]byte(`"metadata":`), newObject...)
		if len(obj.Members) > 0 {
			ins = append([]byte{','}, ins...)
		}
		return splice(body, obj.Insert, obj.Insert, ins), nil
	}
	mv := body[md.Start:md.End]
	if string(mv) == "null" {
		return splice(body, md.Start, md.End, newObject), nil
	}
	meta, err := scanJSONObject(mv)
	if err != nil {
		return nil, errors.New("reconcile batches tag needs metadata to be an object or null")
	}
	names := map[string]bool{}
	for _, m := range meta.Members {
		names[m.Name] = true
		if m.Name != key {
			continue
		}
		var v string
		if json.Unmarshal(mv[m.Start:m.End], &v) != nil || v != value {
			return nil, fmt.Errorf("reconcile batches tag needs the metadata entry %q, which the body gives another value", key)
		}
	}
	if names[key] {
		return body, nil // tagged already, with this attempt's tag
	}
	if len(names) >= batchesMaxMetadata {
		return nil, fmt.Errorf("reconcile batches tag needs one metadata entry, and the body's metadata has %d already, the most allowed (OpenAI API reference: metadata, up to 16 key-value pairs)", len(names))
	}
	if len(meta.Members) > 0 {
		entry = append([]byte{','}, entry...)
	}
	at := md.Start + meta.Insert
	return splice(body, at, at, entry), nil
}

// splice returns a new slice: b with b[from:to] replaced by ins.
func splice(b []byte, from, to int, ins []byte) []byte {
	out := make([]byte, 0, len(b)-(to-from)+len(ins))
	out = append(out, b[:from]...)
	out = append(out, ins...)
	return append(out, b[to:]...)
}

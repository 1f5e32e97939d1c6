// Reads JSONL cases {id, content_type, body_b64} on stdin; prints JSONL {id, ok, parts, error} with the
// parts Go's net/http sees through Request.ParseMultipartForm, which gin's c.MultipartForm and c.FormFile
// (GoToSocial) call.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"sort"
)

type inCase struct {
	ID          string `json:"id"`
	ContentType string `json:"content_type"`
	BodyB64     string `json:"body_b64"`
}

type part struct {
	Name     string  `json:"name"`
	Filename *string `json:"filename"`
	Sha256   string  `json:"sha256"`
	Size     int     `json:"size"`
	File     bool    `json:"file"`
}

type result struct {
	ID    string `json:"id"`
	Ok    bool   `json:"ok"`
	Parts []part `json:"parts"`
	Error string `json:"error,omitempty"`
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func run(c inCase) result {
	body, err := base64.StdEncoding.DecodeString(c.BodyB64)
	if err != nil {
		return result{ID: c.ID, Parts: []part{}, Error: "bad base64"}
	}
	req, _ := http.NewRequest("POST", "http://localhost/upload", bytes.NewReader(body))
	req.Header.Set("Content-Type", c.ContentType)
	if err := req.ParseMultipartForm(32 << 20); err != nil {
		return result{ID: c.ID, Parts: []part{}, Error: err.Error()}
	}
	parts := []part{}
	form := req.MultipartForm
	keys := make([]string, 0, len(form.Value))
	for k := range form.Value {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range form.Value[k] {
			parts = append(parts, part{Name: k, Sha256: digest([]byte(v)), Size: len(v)})
		}
	}
	keys = keys[:0]
	for k := range form.File {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, fh := range form.File[k] {
			f, err := fh.Open()
			if err != nil {
				return result{ID: c.ID, Parts: []part{}, Error: err.Error()}
			}
			data, _ := io.ReadAll(f)
			f.Close()
			name := fh.Filename
			parts = append(parts, part{Name: k, Filename: &name, Sha256: digest(data), Size: len(data), File: true})
		}
	}
	form.RemoveAll()
	return result{ID: c.ID, Ok: true, Parts: parts}
}

// encode writes the photo on stdin as Go's mime/multipart.Writer sends it (GoToSocial's own outgoing
// requests, Go clients): {content_type, body_b64} on stdout.
func encode() {
	photo, _ := io.ReadAll(os.Stdin)
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	w.WriteField("description", "a cup of coffee")
	f, _ := w.CreateFormFile("file", "café (1).jpg")
	f.Write(photo)
	w.Close()
	json.NewEncoder(os.Stdout).Encode(map[string]string{"content_type": w.FormDataContentType(), "body_b64": base64.StdEncoding.EncodeToString(buf.Bytes())})
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "encode" {
		encode()
		return
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 256<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var c inCase
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			os.Exit(2)
		}
		out.Encode(run(c))
	}
}

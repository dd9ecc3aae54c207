// Package templates renders the notification texts: files embedded in the
// binary, one folder per notification. An email has subject.txt, body.txt
// and body.html; a browser notification has title.txt and body.txt.
package templates

import (
	"bytes"
	"embed"
	"fmt"
	htmltemplate "html/template"
	"io/fs"
	"path"
	"strings"
	texttemplate "text/template"
)

//go:embed files
var files embed.FS

// Set holds every parsed template.
type Set struct {
	text map[string]*texttemplate.Template
	html map[string]*htmltemplate.Template
}

// Load parses every embedded template; a field a template uses that the
// data lacks is an error when rendering, not an empty string.
func Load() (*Set, error) {
	s := &Set{text: map[string]*texttemplate.Template{}, html: map[string]*htmltemplate.Template{}}
	err := fs.WalkDir(files, "files", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		name := strings.TrimPrefix(p, "files/")
		if path.Ext(p) == ".html" {
			s.html[name], err = htmltemplate.New(name).Option("missingkey=error").Parse(string(b))
		} else {
			s.text[name], err = texttemplate.New(name).Option("missingkey=error").Parse(string(b))
		}
		if err != nil {
			return fmt.Errorf("parse template %s: %w", name, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Set) render(name string, data any) (string, error) {
	var b bytes.Buffer
	var err error
	switch {
	case s.text[name] != nil:
		err = s.text[name].Execute(&b, data)
	case s.html[name] != nil:
		err = s.html[name].Execute(&b, data)
	default:
		return "", fmt.Errorf("no template %s", name)
	}
	if err != nil {
		return "", fmt.Errorf("render %s: %w", name, err)
	}
	return strings.TrimSpace(b.String()), nil
}

// Email renders the email called name.
func (s *Set) Email(name string, data any) (subject, text, html string, err error) {
	if subject, err = s.render(name+"/subject.txt", data); err != nil {
		return
	}
	if text, err = s.render(name+"/body.txt", data); err != nil {
		return
	}
	html, err = s.render(name+"/body.html", data)
	return
}

// Browser renders the browser notification called name.
func (s *Set) Browser(name string, data any) (title, body string, err error) {
	if title, err = s.render(name+"/title.txt", data); err != nil {
		return
	}
	body, err = s.render(name+"/body.txt", data)
	return
}

// Package rules is the one place that says which notifications each event
// causes.
package rules

import (
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"
)

// Patterns are the subscriptions the notification service needs: the
// rules' events, and the edges' receipts of browser notifications.
var Patterns = []string{"user:*", "order:*", "payment:*", "notification:delivered"}

// Kind is how a notification reaches the user.
type Kind int

// Kinds of notification. An email always goes as an email. A browser
// notification is routed by presence: in the page when the user has a
// live connection, else as a Web Push when the user subscribed to them,
// else as an email (EmailTemplate, with Title, Body and Link).
const (
	Email Kind = iota
	Browser
)

// EmailTemplate is the email a browser notification goes as when it is
// emailed: its Title, Body and Link in a generic email.
const EmailTemplate = "notification"

// Contact is where a user's emails go.
type Contact struct {
	Email string
	Name  string
}

// Action is one notification to send.
type Action struct {
	// Name identifies the notification of the event ("welcome_email"): with
	// the event id it is the key that makes sending exactly once.
	Name string
	Kind Kind
	// Template is the folder of the texts.
	Template string
	UserID   string
	// To is the recipient when the event itself carries it; otherwise the
	// user's recorded contact is used.
	To *Contact
	// Link is where a browser notification leads.
	Link string
	// Data fills the templates.
	Data map[string]string
	// Emailed, for a Browser action, says another action of the plan
	// emails the user about the same event: a user neither online nor
	// subscribed to pushes gets that email, not a second one.
	Emailed bool
}

// Plan is what to do about one event.
type Plan struct {
	// UserID is whose event it is; events of one user are handled in order.
	UserID string
	// SaveContact, when set, is recorded for UserID before the actions run.
	SaveContact *Contact
	Actions     []Action
}

// For returns the plan for an event of type typ whose data is msg. An event
// the rules ignore gets an empty plan.
func For(typ string, msg proto.Message) Plan {
	switch m := msg.(type) {
	case *eventbusv1.UserCreated:
		if typ != "user.created" {
			break
		}
		c := &Contact{Email: m.GetEmail(), Name: nameOr(m.GetName(), m.GetEmail())}
		return Plan{UserID: m.GetUserId(), SaveContact: c, Actions: []Action{
			{Name: "welcome_email", Kind: Email, Template: "welcome", UserID: m.GetUserId(), To: c, Data: map[string]string{}},
		}}
	case *eventbusv1.OrderPlaced:
		if typ != "order.placed" {
			break
		}
		data := map[string]string{"OrderID": m.GetOrderId(), "Amount": Money(m.GetTotal(), m.GetCurrency())}
		return Plan{UserID: m.GetUserId(), Actions: []Action{
			{Name: "order_received_browser", Kind: Browser, Template: "order_received", UserID: m.GetUserId(), Link: "/orders/" + m.GetOrderId(), Data: data},
		}}
	case *eventbusv1.OrderShipped:
		if typ != "order.shipped" {
			break
		}
		data := map[string]string{"OrderID": m.GetOrderId(), "Carrier": m.GetCarrier(), "TrackingNumber": m.GetTrackingNumber()}
		return Plan{UserID: m.GetUserId(), Actions: []Action{
			{Name: "shipped_email", Kind: Email, Template: "shipped", UserID: m.GetUserId(), Data: data},
			{Name: "shipped_browser", Kind: Browser, Template: "shipped_browser", UserID: m.GetUserId(), Link: "/orders/" + m.GetOrderId(), Data: data, Emailed: true},
		}}
	case *eventbusv1.PaymentCompleted:
		if typ != "payment.completed" {
			break
		}
		data := map[string]string{"OrderID": m.GetOrderId(), "PaymentID": m.GetPaymentId(), "Amount": Money(m.GetAmount(), m.GetCurrency())}
		return Plan{UserID: m.GetUserId(), Actions: []Action{
			{Name: "receipt_email", Kind: Email, Template: "receipt", UserID: m.GetUserId(), Data: data},
			{Name: "payment_browser", Kind: Browser, Template: "payment_browser", UserID: m.GetUserId(), Link: "/orders/" + m.GetOrderId(), Data: data, Emailed: true},
		}}
	}
	return Plan{}
}

func nameOr(name, email string) string {
	if name != "" {
		return name
	}
	local, _, _ := strings.Cut(email, "@")
	return local
}

// minorDigits lists the ISO 4217 currencies whose minor unit is not a
// hundredth.
var minorDigits = map[string]int{"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3}

// Money renders an amount in minor units: Money(1299, "EUR") = "12.99 EUR".
func Money(minor int64, currency string) string {
	digits, ok := minorDigits[currency]
	if !ok {
		digits = 2
	}
	sign := ""
	if minor < 0 {
		sign, minor = "-", -minor
	}
	if digits == 0 {
		return fmt.Sprintf("%s%d %s", sign, minor, currency)
	}
	s := strconv.FormatInt(minor, 10)
	for len(s) <= digits {
		s = "0" + s
	}
	return fmt.Sprintf("%s%s.%s %s", sign, s[:len(s)-digits], s[len(s)-digits:], currency)
}

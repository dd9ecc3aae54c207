package rules_test

import (
	"testing"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/services/notification/internal/rules"
)

func TestMoney(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		minor    int64
		currency string
		want     string
	}{
		{1299, "EUR", "12.99 EUR"},
		{5, "USD", "0.05 USD"},
		{0, "USD", "0.00 USD"},
		{-250, "GBP", "-2.50 GBP"},
		{1500, "JPY", "1500 JPY"},
		{1234, "KWD", "1.234 KWD"},
	} {
		if got := rules.Money(tt.minor, tt.currency); got != tt.want {
			t.Errorf("Money(%d, %s) = %q, want %q", tt.minor, tt.currency, got, tt.want)
		}
	}
}

func TestForIgnoresMismatchedTypes(t *testing.T) {
	t.Parallel()
	// The data must be the message of its type; anything else is ignored.
	if p := rules.For("order.shipped", &eventbusv1.UserCreated{UserId: "1", Email: "a@b.c"}); len(p.Actions) != 0 || p.SaveContact != nil {
		t.Errorf("For(order.shipped, UserCreated) = %+v, want nothing", p)
	}
	if p := rules.For("user.created", &eventbusv1.UserCreated{UserId: "1", Email: "a@b.c"}); p.SaveContact == nil || p.SaveContact.Name != "a" {
		t.Errorf("For(user.created) = %+v, want the contact saved with a name from the address", p)
	}
}

package integration

import (
	"context"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/sandbox"
	"sync"
	"testing"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// TestRedisCluster: two Caddy nodes share a three-master Redis Cluster.
// The platform sprays every callback at both nodes at once (two copies
// each); the shop stores every event exactly once, and the de-dup keys
// are spread over the masters.
func TestRedisCluster(t *testing.T) {
	requireCaddy(t)
	cluster := redistest.StartCluster(t)
	secret, fake, shop, nodeA, nodeB := startTwoNodes(t, func(c *caddyConfig) { c.Dedupe = "redis " + cluster.URL })
	fake.configure(func(k *sandbox.Knobs) { k.Copies = 2 })
	t.Cleanup(fake.stopDeliveries)
	// A slow shop keeps the first copy in flight while the others arrive.
	shop.admin(t, "slow?ms=300")

	s := &stack{t: t, secret: secret, fake: fake, shop: shop, caddy: nodeA}
	var wechat, alipay []string
	for range 3 {
		wx, ali := newPaymentID("rc-wx"), newPaymentID("rc-ali")
		checkGateAccepted(t, s, shop.call(t, "/buy", map[string]any{"method": "wechat", "payment_id": wx, "amount": 1000, "currency": "CNY"}), "/v2/payment/wallet/wechat/sale", wx)
		checkGateAccepted(t, s, shop.call(t, "/buy", map[string]any{"method": "alipay", "payment_id": ali, "amount": 40000, "currency": "CNY"}), "/v2/payment/wallet/alipay/sale", ali)
		wechat, alipay = append(wechat, wx), append(alipay, ali)
	}
	for i := range wechat {
		waitShopEvent(t, shop, wechat[i], "sale", "success", settleTimeout)
		waitShopEvent(t, shop, alipay[i], "sale", "decline", settleTimeout)
	}
	n := len(fake.allCallbacks())
	if n < 6 {
		t.Fatalf("the fake produced %d callbacks for 6 payments", n)
	}
	// Every callback × 2 nodes × 2 copies.
	waitSettled(t, fake, 4*n, settleTimeout)

	st := shop.state(t)
	matched := checkExactlyOnce(t, fake, st)
	if len(st.Events) != n {
		t.Errorf("fake produced %d callbacks, shop stored %d events", n, len(st.Events))
	}
	perNode := map[string]int{}
	for _, d := range fake.deliveriesOf(nil) {
		for _, a := range d.Attempts {
			if a.Status == 200 && !a.Duplicate {
				perNode[d.URL]++
			}
		}
	}
	t.Logf("%d callbacks, forwarded by node: %v", n, perNode)
	for _, e := range matched {
		checkForwarded(t, e)
		reverify(t, e, secret)
	}

	// The delivered keys live on more than one master.
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cluster.Addrs})
	defer c.Close()
	var mu sync.Mutex
	keys := map[string]int{}
	err := c.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error {
		ks, err := m.Keys(ctx, "ecommpay:dedupe:*").Result()
		mu.Lock()
		keys[m.Options().Addr] = len(ks)
		mu.Unlock()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("de-dup keys by master: %v", keys)
	spread := 0
	for _, k := range keys {
		if k > 0 {
			spread++
		}
	}
	if spread < 2 {
		t.Errorf("de-dup keys on %d master(s) of 3: %v", spread, keys)
	}

	// A master goes. Callbacks whose keys it served get 503 and never reach
	// the shop; the others are forwarded. 24 new callbacks all miss a third
	// of the slots with a chance of 6e-5.
	cluster.Stop(0)
	shop.admin(t, "slow?ms=0")
	before := shop.state(t).CallbackPosts
	codes := make([]int, 24)
	var wg sync.WaitGroup
	for i := range codes {
		node := []*caddyProc{nodeA, nodeB}[i%2]
		body := fake.signedCallback(wechat[i%len(wechat)], "refund", "success")
		wg.Go(func() {
			code, _, ans, err := fake.postRaw(node.callbackURL(), body, nil)
			if err != nil {
				t.Error(err)
			}
			if code != 200 && code != 503 {
				t.Errorf("%s with a master down: %d %q, want 200 or 503", node.name, code, ans)
			}
			codes[i] = code
		})
	}
	wg.Wait()
	count := map[int]int{}
	for _, c := range codes {
		count[c]++
	}
	t.Logf("with a master down: %v", count)
	if count[503] == 0 || count[200] == 0 {
		t.Errorf("with a master down: %v, want both 200 and 503", count)
	}
	if got := shop.state(t).CallbackPosts - before; got != count[200] {
		t.Errorf("the shop got %d callbacks, %d were answered 200", got, count[200])
	}
}

<?php
// Optional: check a callback's signature in the app too, as ecommpay's PHP
// SDK does (its SignatureHandler). Caddy has verified it already, and
// re-signs a body it changed, so this passes for every event Caddy
// forwards; it guards an app that something other than Caddy can reach.
//
//   require 'verify.php';
//   if (!ecommpay_signature_valid($raw, file_get_contents('/etc/shop/ecommpay.secret'))) { ... }
declare(strict_types=1);

function ecommpay_signature_valid(string $raw, string $secret): bool
{
    $data = json_decode($raw, true);
    if (!is_array($data)) {
        return false;
    }
    $signature = $data['signature'] ?? $data['general']['signature'] ?? null;
    if (!is_string($signature)) {
        return false;
    }
    $secret = rtrim($secret, "\n"); // a secret file's trailing newline
    $want = base64_encode(hash_hmac('sha512', ecommpay_canonical($data, true), $secret, true));
    return hash_equals($want, $signature);
}

// ecommpay_canonical is the string ecommpay signs: every leaf as
// path:value, nested keys joined with ':' (a ':' inside a key doubled),
// frame_mode left out, and for callbacks every signature member too,
// sorted by path in natural order and joined with ';'.
function ecommpay_canonical(array $data, bool $callback): string
{
    $items = [];
    $walk = function (array $value, string $prefix) use (&$walk, &$items, $callback): void {
        foreach ($value as $key => $v) {
            if ($key === 'frame_mode' || ($callback && $key === 'signature')) {
                continue;
            }
            $path = ($prefix === '' ? '' : $prefix . ':') . str_replace(':', '::', (string)$key);
            if (is_array($v)) {
                $walk($v, $path);
            } else {
                $items[$path] = $path . ':' . (is_bool($v) ? ($v ? '1' : '0') : (string)$v);
            }
        }
    };
    $walk($data, '');
    ksort($items, SORT_NATURAL);
    return implode(';', $items);
}

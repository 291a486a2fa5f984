<?php
// Checks examples/app/verify.php against the conformance vectors:
//   php selftest.php ../../testdata/signature-vectors.json
// prints one line per failure and a summary, and exits 1 on any failure.
declare(strict_types=1);
require __DIR__ . '/../../examples/app/verify.php';

$vectors = json_decode(file_get_contents($argv[1]), true);
$n = $bad = 0;
foreach ($vectors as $e) {
    if ($e['type'] === 'sign') {
        $n++;
        $canonical = ecommpay_canonical(json_decode($e['params_json'], true), false);
        $signature = base64_encode(hash_hmac('sha512', $canonical, $e['secret'], true));
        if ($canonical !== $e['canonical'] || $signature !== $e['signature']) {
            $bad++;
            echo "FAIL sign {$e['name']}\n got " . json_encode($canonical) . "\nwant " . json_encode($e['canonical']) . "\n";
        }
    } elseif ($e['type'] === 'callback') {
        $n++;
        if (ecommpay_signature_valid($e['raw_body'], $e['secret']) !== $e['expect_valid']) {
            $bad++;
            echo "FAIL callback {$e['name']}\n";
        }
    }
}
echo "selftest: $n vectors, $bad failed\n";
exit($bad === 0 && $n > 0 ? 0 : 1);

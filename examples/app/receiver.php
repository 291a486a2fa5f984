<?php
// An ecommpay callback receiver for an app behind caddy-ecommpay.
//
// Caddy has already verified the signature, refused forgeries and dropped
// retries it delivered before. The app stores each event once, keyed by
// X-Ecommpay-Event-Key, and answers 2xx only once it is stored: any other
// answer makes ecommpay retry. Run it with PHP's built-in server:
//
//   APP_DB=/var/lib/shop/ecommpay-events.db php -S 127.0.0.1:9000 receiver.php
//
// (needs PDO SQLite, Debian: php-sqlite3; with MySQL or PostgreSQL change
// the DSN and write INSERT IGNORE or keep ON CONFLICT ... DO NOTHING).
declare(strict_types=1);

if ($_SERVER['REQUEST_METHOD'] !== 'POST') {
    http_response_code(405);
    exit;
}
$key = $_SERVER['HTTP_X_ECOMMPAY_EVENT_KEY'] ?? '';
$raw = file_get_contents('php://input');
$event = json_decode($raw, true);
if ($key === '' || !is_array($event) || array_is_list($event)) {
    http_response_code(400); // not sent by Caddy: nothing to store
    exit;
}

$payment = $event['payment'] ?? [];
// A callback has one operation; a status event (X-Ecommpay-Source: status)
// has a list of operations instead: take the last one.
$operations = $event['operations'] ?? [];
$operation = $event['operation'] ?? (end($operations) ?: []);

$db = new PDO('sqlite:' . (getenv('APP_DB') ?: 'ecommpay-events.db'), null, null, [
    PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
    PDO::ATTR_TIMEOUT => 10,
]);
$db->exec('CREATE TABLE IF NOT EXISTS ecommpay_events (
    event_key        TEXT PRIMARY KEY,
    payment_id       TEXT NOT NULL,
    payment_status   TEXT NOT NULL,
    operation_type   TEXT NOT NULL,
    operation_status TEXT NOT NULL,
    source           TEXT NOT NULL,
    body             TEXT NOT NULL,
    received_at      TEXT NOT NULL
)');

$db->beginTransaction();
$insert = $db->prepare('INSERT INTO ecommpay_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (event_key) DO NOTHING');
$insert->execute([
    $key,
    (string)($payment['id'] ?? ''),
    (string)($payment['status'] ?? ''),
    (string)($operation['type'] ?? ''),
    (string)($operation['status'] ?? ''),
    $_SERVER['HTTP_X_ECOMMPAY_SOURCE'] ?? 'callback',
    $raw,
    gmdate('c'),
]);
if ($insert->rowCount() === 1) {
    // A new event: act on it here, in the same transaction (mark the
    // order paid when payment.status is "success", show the QR code of a
    // display_data entry, send the customer to redirect_data.url, ...).
}
// A retry, or a replay from the console (X-Ecommpay-Replay: 1), has a key
// already stored: nothing to do, and the answer is 200 all the same.
$db->commit();

http_response_code(200);
header('Content-Type: text/plain');
echo "OK\n";

<?php
// Router script for `php -S`: answers one POST with JSON {ok, parts, error} from PHP's own multipart
// parser ($_FILES, $_POST), as Pixelfed (Laravel under PHP-FPM) sees them.
$error = error_get_last();
$parts = [];
function walk_post($value, $name, &$parts) {
    if (is_array($value)) {
        $list = array_keys($value) === range(0, count($value) - 1);
        foreach ($value as $k => $v) walk_post($v, $list ? "{$name}[]" : "{$name}[{$k}]", $parts);
        return;
    }
    $parts[] = ['name' => $name, 'filename' => null, 'sha256' => hash('sha256', $value), 'size' => strlen($value), 'file' => false];
}
function walk_files($f, $name, &$parts) {
    if (is_array($f['name'])) {
        $list = array_keys($f['name']) === range(0, count($f['name']) - 1);
        foreach (array_keys($f['name']) as $k) {
            $sub = [];
            foreach ($f as $field => $values) $sub[$field] = $values[$k];
            walk_files($sub, $list ? "{$name}[]" : "{$name}[{$k}]", $parts);
        }
        return;
    }
    if ($f['error'] === UPLOAD_ERR_NO_FILE) return;
    if ($f['error'] !== UPLOAD_ERR_OK) {
        $parts[] = ['name' => $name, 'filename' => $f['name'], 'sha256' => null, 'size' => 0, 'file' => true, 'upload_error' => $f['error']];
        return;
    }
    $data = file_get_contents($f['tmp_name']);
    $parts[] = ['name' => $name, 'filename' => $f['name'], 'sha256' => hash('sha256', $data), 'size' => strlen($data), 'file' => true];
}
foreach ($_POST as $k => $v) walk_post($v, (string)$k, $parts);
foreach ($_FILES as $k => $f) walk_files($f, (string)$k, $parts);
header('Content-Type: application/json');
if ($error !== null) {
    echo json_encode(['ok' => false, 'parts' => [], 'error' => $error['message']], JSON_INVALID_UTF8_SUBSTITUTE);
} else {
    echo json_encode(['ok' => true, 'parts' => $parts], JSON_INVALID_UTF8_SUBSTITUTE);
}

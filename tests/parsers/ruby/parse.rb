# Reads JSONL cases {id, content_type, body_b64} on stdin; prints JSONL {id, ok, parts, error} with the
# parts Rack::Request#POST (Rack::Multipart::Parser) gives a Rails app (Mastodon).
require "json"
require "base64"
require "digest"
require "stringio"
require "rack"

def text(s)
  s = s.to_s.dup.force_encoding(Encoding::UTF_8)
  s.valid_encoding? ? s : s.scrub("\uFFFD")
end

def walk(value, name, out)
  case value
  when Hash
    if value.key?(:tempfile)
      data = value[:tempfile].tap(&:rewind).read.to_s.b
      out << { name: text(name), filename: value[:filename] && text(value[:filename]), sha256: Digest::SHA256.hexdigest(data), size: data.bytesize, file: true }
    else
      value.each { |k, v| walk(v, name ? "#{name}[#{k}]" : k.to_s, out) }
    end
  when Array
    value.each { |v| walk(v, "#{name}[]", out) }
  when nil
    out << { name: text(name), filename: nil, sha256: nil, size: 0, file: false, nil: true }
  else
    data = value.to_s.b
    out << { name: text(name), filename: nil, sha256: Digest::SHA256.hexdigest(data), size: data.bytesize, file: false }
  end
end

STDOUT.sync = true
STDIN.each_line do |line|
  next if line.strip.empty?
  c = JSON.parse(line)
  result = { id: c["id"] }
  begin
    body = Base64.strict_decode64(c["body_b64"])
    env = Rack::MockRequest.env_for("/upload", method: "POST", input: body.b, "CONTENT_TYPE" => c["content_type"])
    params = Rack::Request.new(env).POST
    parts = []
    walk(params, nil, parts)
    result.merge!(ok: true, parts: parts)
  rescue StandardError => e
    result.merge!(ok: false, parts: [], error: text("#{e.class}: #{e.message}"[0, 300]))
  end
  puts JSON.generate(result)
end

# Every value here is set by goldsmith for each build (see src/goldsmith/packer.py);
# nothing is edited by hand per build. Defaults only make `packer validate` possible.

variable "image_name" {
  type    = string
  default = "base"
}

variable "git_sha" {
  type    = string
  default = "unknown"
}

variable "build_id" {
  type    = string
  default = "validate"
}

variable "fingerprint" {
  type    = string
  default = "unknown"
}

variable "roles" {
  type    = string
  default = ""
}

variable "playbook" {
  type    = string
  default = "playbooks/base.yml"
}

variable "ansible_playbook" {
  type        = string
  default     = "ansible-playbook"
  description = "ansible-playbook from the project's virtualenv"
}

variable "ansible_env_vars" {
  type    = list(string)
  default = []
}

variable "spec_command" {
  type        = string
  default     = "true"
  description = "Runs the specs of the image's roles against the live machine (host and port in the environment)"
}

variable "seal_script" {
  type    = string
  default = "src/goldsmith/data/seal.sh"
}

variable "build_user" {
  type        = string
  description = "The user the build logs in as (goldsmith's own, or the AMI's); the seal's GOLDSMITH_BUILD_USER"
}

variable "ssh_private_key_file" {
  type    = string
  default = ""
}

# --- local target (qemu) -----------------------------------------------------

variable "base_image" {
  type        = string
  default     = "base.qcow2"
  description = "Path or URL of the base disk image"
}

variable "base_checksum" {
  type        = string
  default     = "none"
  description = "Checksum of base_image (\"none\" for a base built here, which is cached by its hash)"
}

variable "build_credential" {
  type        = string
  default     = "type=11,value=goldsmith.build_key=none"
  description = "SMBIOS OEM string carrying this build's public key to the guest"
}

variable "accelerator" {
  type    = string
  default = "tcg"
}

variable "output_directory" {
  type    = string
  default = "build/.packer"
}

variable "ssh_host_port" {
  type    = number
  default = 2222
}

variable "cpus" {
  type    = number
  default = 2
}

variable "memory" {
  type    = number
  default = 2048
}

variable "disk_size" {
  type    = string
  default = "4G"
}

variable "manifest_path" {
  type    = string
  default = "build/.packer-manifest.json"
}

variable "cloud_init_seed" {
  type        = string
  default     = "type=1"
  description = "SMBIOS system entry; for a cloud-image base it points cloud-init at the NoCloud seed"
}

variable "http_directory" {
  type        = string
  default     = ""
  description = "Folder Packer serves to the guest (the NoCloud seed of a cloud-image base)"
}

variable "http_port" {
  type    = number
  default = 8700
}

variable "ssh_proxy_host" {
  type        = string
  default     = ""
  description = "A local bake: the SOCKS5 proxy Packer's own SSH connection goes through (goldsmith.sshready); empty: none"
}

variable "ssh_proxy_port" {
  type    = number
  default = 1080
}
